"""Small helpers shared across layers (no imports from the rest of the package)."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path


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
