"""A local, in-memory stand-in for the Hugging Face Hub HTTP API, for offline tests.

It speaks the subset of the Hub API that ``huggingface_hub`` (2.x) uses to create a repository,
upload a folder and download files, so ``push_to_hub`` -> ``AutoModel.from_pretrained`` can
run end to end without a network:

| request | used by |
| --- | --- |
| ``POST /api/repos/create`` | ``HfApi.create_repo`` |
| ``POST /api/validate-yaml`` | ``HfApi.upload_folder`` (README metadata check) |
| ``POST /api/models/{repo}/preupload/{rev}`` | upload mode of each file |
| ``POST /api/models/{repo}/commit/{rev}`` | the commit itself (ndjson, base64 file contents) |
| ``GET /api/models/{repo}[/revision/{rev}]`` | ``HfApi.model_info`` / ``repo_info`` |
| ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` | ``hf_hub_download`` |
| ``GET /api/agent-harnesses`` | the user-agent helper of ``huggingface_hub`` |

Simplifications, each chosen so the client takes its ordinary code path: every file is
uploaded in "regular" mode (base64 inside the commit, so neither LFS nor Xet storage is
needed), ETags are git blob SHA-1s (what the Hub sends for non-LFS files), only model
repositories and ``namespace/name`` ids exist, there are no branches other than ``main``
(any commit SHA is also a valid revision), and commits can add files but not delete them.
Errors carry the ``X-Error-Code`` headers that ``huggingface_hub`` maps to its exception
classes.

With ``token`` set, writes and reads of private repositories need ``Authorization: Bearer
<token>`` and are answered 401 otherwise, like the Hub.

Point a test at it with :func:`use_fake_hub`, which also isolates every cache and token path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

# Written by the Hub into every new repository's first commit.
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_ROUTES = (
    ("POST", re.compile(r"^/api/repos/create$"), "_create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "_agent_harnesses"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "_preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "_commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "_model_info"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "_resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "_resolve"),
)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of ``content`` stored as a blob (the Hub's ETag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeCommit:
    """One commit: its id, message and the full snapshot of files it leaves behind."""

    oid: str
    message: str
    files: dict[str, bytes]
    date: str = field(
        default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )


@dataclass
class FakeRepo:
    """A model repository: its commits on ``main``, oldest first."""

    repo_id: str
    private: bool
    commits: list[FakeCommit]

    @property
    def head(self) -> FakeCommit:
        return self.commits[-1]

    def resolve(self, revision: str) -> FakeCommit | None:
        """The commit ``revision`` (``main`` or a full commit SHA) names, or None."""
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


class HubError(Exception):
    """An error answer: HTTP status, message and the Hub's ``X-Error-Code`` (if any)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


class FakeHub:
    """A threaded local HTTP server holding model repositories in memory.

    Use it as a context manager (or call :meth:`start` / :meth:`stop`); :attr:`endpoint`
    is its base URL. :attr:`requests` records ``(method, path)`` of every request in
    arrival order, :attr:`unhandled` those no route answered (404).
    """

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None
        # Open client connections: HTTP/1.1 keeps them alive past shutdown() unless closed.
        self._connections: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only valid while running)."""
        if self._endpoint is None:
            raise RuntimeError("the fake Hub is not running: call start() first")
        return self._endpoint

    def start(self) -> FakeHub:
        """Listen on a free port of 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the fake Hub is already running")
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self._endpoint = f"http://{host}:{port}"
        # A short poll interval keeps stop() (which waits for the next poll) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
            name="fake-hub", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and every open connection (idempotent).

        Afterwards the port refuses connections, like an unreachable Hub.
        """
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it already
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread, self._endpoint = None, None, None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file of ``repo_id`` at ``revision``."""
        with self._lock:
            repo = self.repos.get(repo_id)
            commit = repo.resolve(revision) if repo is not None else None
            if commit is None:
                raise KeyError(f"no revision {revision!r} of repository {repo_id!r}")
            return dict(commit.files)

    # ------------------------------------------------------------------ dispatch
    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        """Answer one request (called from the handler threads)."""
        url = urlsplit(target)
        path, query = unquote(url.path), parse_qs(url.query)
        with self._lock:
            self.requests.append((method, path))
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(path)
                if route_method == method and match:
                    try:
                        return getattr(self, name)(
                            method=method, headers=headers, body=body, query=query,
                            **{k: v for k, v in match.groupdict().items() if v is not None},
                        )
                    except HubError as error:
                        return self._error(error)
            self.unhandled.append((method, path))
        return self._error(HubError(404, f"fake Hub has no route for {method} {path}"))

    @staticmethod
    def _error(error: HubError) -> _Response:
        response = _Response.json({"error": error.message}, status=error.status)
        response.headers["X-Error-Message"] = error.message
        if error.code is not None:
            response.headers["X-Error-Code"] = error.code
        if error.commit is not None:
            response.headers["X-Repo-Commit"] = error.commit
        return response

    def _authorise(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        if headers.get("authorization") != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, headers: dict[str, str]) -> FakeRepo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", code="RepoNotFound")
        if repo.private:
            try:
                self._authorise(headers)
            except HubError:
                # The Hub does not reveal that a private repository exists.
                raise HubError(
                    401, f"Repository not found: {repo_id}", code="RepoNotFound"
                ) from None
        return repo

    @staticmethod
    def _commit_of(repo: FakeRepo, revision: str) -> FakeCommit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    @staticmethod
    def _json_body(body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"request body is not JSON: {error}") from None

    # ------------------------------------------------------------------ routes
    def _create_repo(self, *, headers, body, **_) -> _Response:
        self._authorise(headers)
        payload = self._json_body(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, f"the fake Hub only hosts model repos, got {payload['type']!r}")
        if not payload.get("organization"):
            raise HubError(400, "the fake Hub needs repo ids of the form namespace/name")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return _Response.json({"error": "You already created this model repo", "url": url}, 409)
        initial = {".gitattributes": _GITATTRIBUTES}
        self.repos[repo_id] = FakeRepo(
            repo_id=repo_id,
            private=payload.get("visibility") == "private" or bool(payload.get("private")),
            commits=[FakeCommit(_commit_oid(None, "initial commit", initial), "initial commit",
                                initial)],
        )
        return _Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, *, body, **_) -> _Response:
        content = self._json_body(body).get("content", "")
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---", content, re.DOTALL)
        if match is None:
            return _Response.json({"errors": [], "warnings": [{"message": "empty metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return _Response.json({"errors": [{"message": str(error)}]}, status=400)
        if not isinstance(metadata, dict):
            return _Response.json({"errors": [{"message": "metadata must be a mapping"}]}, 400)
        return _Response.json({"errors": [], "warnings": []})

    def _agent_harnesses(self, **_) -> _Response:
        return _Response.json({"standardEnvVars": [], "harnesses": {}})

    def _preupload(self, *, repo, rev, headers, body, **_) -> _Response:
        self._authorise(headers)
        commit = self._commit_of(self._repo(repo, headers), rev)
        files = []
        for entry in self._json_body(body).get("files", []):
            existing = commit.files.get(entry["path"])
            files.append({
                "path": entry["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                # The client skips files whose remote oid equals its local git blob id.
                "oid": git_blob_sha1(existing) if existing is not None else None,
            })
        return _Response.json({"files": files, "commitOid": commit.oid})

    def _commit(self, *, repo, rev, headers, body, **_) -> _Response:
        self._authorise(headers)
        target = self._repo(repo, headers)
        if unquote(rev) != "main":
            raise HubError(400, f"the fake Hub only commits to main, got {rev!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit payload starts with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != target.head.oid:
            raise HubError(412, f"parent commit {parent} is not the head of main")
        files = dict(target.head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            else:
                # lfsFile needs a storage backend (this fake answers "regular" to every
                # preupload, so the client never sends one); deletions are not needed by an
                # upload of a folder.
                raise HubError(422, f"the fake Hub does not support commit entries {key!r}")
        message = header.get("summary") or "commit"
        oid = _commit_oid(target.head.oid, message, files)
        target.commits.append(FakeCommit(oid, message, files))
        return _Response.json({
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.endpoint}/{repo}/commit/{oid}",
            "hookOutput": "",
        })

    def _model_info(self, *, repo, headers, rev="main", **_) -> _Response:
        target = self._repo(repo, headers)
        commit = self._commit_of(target, rev)
        return _Response.json({
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "private": target.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def _resolve(self, *, method, repo, rev, path, headers, **_) -> _Response:
        commit = self._commit_of(self._repo(repo, headers), rev)
        content = commit.files.get(path)
        if content is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", commit=commit.oid)
        response = _Response(200, content if method == "GET" else b"")
        response.headers.update({
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(content)}"',
            "X-Repo-Commit": commit.oid,
            "Content-Length": str(len(content)),
        })
        return response


def _commit_oid(parent: str | None, message: str, files: dict[str, bytes]) -> str:
    digest = hashlib.sha1(f"{parent}\n{message}\n".encode())
    for path in sorted(files):
        digest.update(f"{path}\0{git_blob_sha1(files[path])}\n".encode())
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so the client's connection pool can keep connections alive, as with the Hub.
    protocol_version = "HTTP/1.1"
    fake_hub: FakeHub

    def setup(self) -> None:
        super().setup()
        with self.fake_hub._lock:
            self.fake_hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake_hub._lock:
            self.fake_hub._connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        body = self._read_body()
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = self.fake_hub.handle(self.command, self.path, headers, body)
        self.send_response(response.status, HTTPStatus(response.status).phrase)
        response.headers.setdefault("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        # huggingface_hub sends every body with a Content-Length (no chunked encoding).
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the per-request log lines on stderr (``FakeHub.requests`` has them)."""


def use_fake_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Point ``huggingface_hub`` (and so ``transformers``) at ``endpoint``, online.

    ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and its cache paths once at
    import into ``huggingface_hub.constants``, so the constants are patched, not only the
    environment. Every cache, token and registry path moves under ``home`` so a test never
    reads the machine's Hub token (which must not go to a fake server) or writes outside
    its temporary folder.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(home / "assets"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(home / "xet"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
