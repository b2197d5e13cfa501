"""Small helpers shared across layers (no imports from the rest of the package)."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO


def default_cache_dir() -> Path:
    """Root folder for generated data (synthetic datasets, indexes, demo outputs).

    ``$REID_TRANSFORMERS_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/reid_transformers`` or
    ``~/.cache/reid_transformers``.
    """
    explicit = os.environ.get("REID_TRANSFORMERS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "reid_transformers"


def replace_directory(staging: Path, target: Path) -> None:
    """Move the finished folder ``staging`` to ``target``, replacing what is there.

    An existing ``target`` is first renamed to a hidden sibling, put back if the swap
    fails, and deleted only once the new folder is in place, so a crash at any point
    leaves either the old or the new complete folder (for an instant, the old one under
    its hidden name). ``staging`` must be on the same file system as ``target``.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, backup)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(backup, target)
            raise
        fsync_directory(target.parent)
        try:
            shutil.rmtree(backup)
        except OSError as error:
            warnings.warn(
                f"{target} was replaced but the previous version at {backup} could not be "
                f"deleted: {error}",
                RuntimeWarning,
                stacklevel=2,
            )
        return
    os.replace(staging, target)
    fsync_directory(target.parent)


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(
    path: Path, write: Callable[[IO[bytes]], None], *, overwrite: bool = True
) -> Path:
    """Write ``path`` through a temporary sibling renamed into place (parents are created).

    Without ``overwrite`` the finished file is hard-linked to ``path``, which fails if
    ``path`` appeared in the meantime, so an existing file is never replaced even by a
    concurrent writer; file systems without hard links fall back to check-then-rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # "x" rather than mkstemp, whose 0600 mode would survive the rename.
        with open(temp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path} already exists; pass overwrite=True to replace it"
                ) from None
            except OSError:
                if path.exists():
                    raise FileExistsError(
                        f"{path} already exists; pass overwrite=True to replace it"
                    ) from None
                os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path
