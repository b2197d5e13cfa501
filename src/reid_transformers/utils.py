"""Small helpers shared across layers (no imports from the rest of the package)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import logging
import math
import numbers
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


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

    Where the system can exchange two paths in one rename (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), ``target`` is never missing: the new folder takes its place in one
    step, the old version lands at ``staging``'s path and is deleted afterwards. Elsewhere the
    old ``target`` is first renamed to a hidden ``.<name>.old-<id>`` sibling, put back if the
    second rename fails, and deleted once the new folder is in place; a process killed
    between the two renames leaves that backup, which :func:`recover_directory` puts back
    (callers run it at start). Either way a crash leaves the old or the new complete folder.
    ``staging`` must be on the same file system as ``target``.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        if _exchange(staging, target):
            fsync_directory(target.parent)
            _delete_old_version(staging, target)
            return
        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, backup)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(backup, target)
            raise
        fsync_directory(target.parent)
        _delete_old_version(backup, target)
        return
    os.replace(staging, target)
    fsync_directory(target.parent)


def _delete_old_version(old: Path, target: Path) -> None:
    try:
        shutil.rmtree(old)
    except OSError as error:
        warnings.warn(
            f"{target} was replaced but the previous version at {old} could not be "
            f"deleted: {error}",
            RuntimeWarning,
            stacklevel=3,
        )


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_renameat2: Callable[..., int] | None = None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic rename; False where the system or the file
    system cannot (the caller then falls back to two renames)."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if function is None:  # a C library older than glibc 2.28
            return False
        function.argtypes = [
            ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
        ]
        function.restype = ctypes.c_int
        _renameat2 = function
    result = _renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a kernel or file system without the flag
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def staging_directory(target: Path) -> Path:
    """The empty hidden sibling ``.<name>.staging`` in which to build ``target``'s next
    version before :func:`replace_directory`; a leftover of an interrupted write is deleted
    first. :func:`recover_directory` knows this name."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def recover_directory(target: Path) -> None:
    """Undo what a process killed while replacing ``target`` left behind.

    A folder swap interrupted between its two renames (see :func:`replace_directory`) leaves
    ``target`` missing and the previous complete version under ``.<name>.old-<id>``: it is put
    back. Backups beside an existing ``target`` and the staging folder of
    :func:`staging_directory` (half written, or the old version after an exchange) are
    deleted. Each action is logged as a warning. Meant for ``target``'s only writer, before
    it writes: another process's swap in progress would look interrupted.

    Raises:
        FileExistsError: ``target`` is missing and several backups exist (a state no single
            interrupted swap leaves; nothing is deleted).
    """
    target = Path(target)
    backups = sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*"))
    if not target.exists() and backups:
        if len(backups) > 1:
            raise FileExistsError(
                f"{target} is missing and {len(backups)} backups of {target} exist "
                f"({', '.join(b.name for b in backups)}): which one is current cannot be "
                "told; move the one to keep to that name and delete the others"
            )
        logger.warning(
            "restoring %s from %s, left by a swap interrupted between its two renames",
            target,
            backups[0],
        )
        os.replace(backups.pop(), target)
        fsync_directory(target.parent)
    staging = target.with_name(f".{target.name}.staging")
    if staging.exists():
        backups.append(staging)
    for leftover in backups:
        logger.warning("deleting %s, left over by an interrupted write of %s", leftover, target)
        shutil.rmtree(leftover)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (before a rename that publishes it)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


def release_freed_memory() -> bool:
    """Hand memory that the C allocator keeps after ``free`` back to the operating system.

    glibc serves blocks below its (adaptive, up to 32 MiB) mmap threshold from a heap that
    it rarely shrinks, so a phase that frees many such blocks leaves them resident, and
    the next phase's peak adds to them. ``malloc_trim(0)`` releases them; it takes
    milliseconds. Elsewhere (macOS, Windows, musl) there is nothing to call.

    Returns:
        Whether ``malloc_trim`` was called.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to load by name (Windows)
        return None


@contextlib.contextmanager
def transformers_progress_bars_disabled() -> Iterator[None]:
    """Silence transformers' own progress bars ("Loading weights", "Writing model shards")
    inside the block: the package shows its own bars where a long job needs one."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# --- validation of arguments: one wording for every module -------------------------------


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), bools excluded."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum`` (bools are not)."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive_number(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number > 0 (bools are not)."""
    if not (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_in_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (bools are not) between ``low``
    and ``high``, each end included or not; the message writes the interval, e.g. ``(0, 1]``.
    NaN is never in range."""
    in_range = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (low <= value if low_inclusive else low < value)
        and (value <= high if high_inclusive else value < high)
    )
    if not in_range:
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_choice(name: str, value: object, allowed: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
