from __future__ import annotations

import ctypes
import errno
import functools
import multiprocessing
import os
import platform
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from reid_transformers import utils
from reid_transformers.utils import default_cache_dir, replace_directory


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_TRANSFORMERS_CACHE", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("REID_TRANSFORMERS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "reid_transformers"


def make_folder(path, text):
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_replace_directory_new_and_existing(tmp_path):
    target = tmp_path / "target"
    replace_directory(make_folder(tmp_path / "a", "first"), target)
    assert (target / "file.txt").read_text() == "first"
    replace_directory(make_folder(tmp_path / "b", "second"), target)
    assert (target / "file.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no backups left


def test_failed_swap_restores_the_old_folder(tmp_path, monkeypatch):
    """The two-rename path (systems without an atomic exchange) puts the old folder back."""
    target = make_folder(tmp_path / "target", "old")
    staging = make_folder(tmp_path / "staging", "new")
    monkeypatch.setattr(utils, "_exchange", lambda *_: False)
    real_replace = os.replace

    def failing(source, destination):
        if str(source) == str(staging):
            raise OSError("disk full")
        real_replace(source, destination)

    monkeypatch.setattr(utils.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_directory(staging, target)
    assert (target / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging", "target"]


def test_write_atomically_replaces_or_refuses_and_leaves_no_temporary(tmp_path):
    from reid_transformers.utils import write_atomically

    target = tmp_path / "sub" / "out.bin"
    write_atomically(target, lambda f: f.write(b"one"))
    assert target.read_bytes() == b"one"
    write_atomically(target, lambda f: f.write(b"two"))
    assert target.read_bytes() == b"two"
    with pytest.raises(FileExistsError, match="already exists"):
        write_atomically(target, lambda f: f.write(b"three"), overwrite=False)

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, failing)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


# --------------------------------------------------------------------- crash-safe swaps
needs_exchange = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="atomic exchange is a Linux rename flag"
)


@needs_exchange
def test_replacing_a_folder_never_leaves_it_missing(tmp_path, monkeypatch):
    """Every rename of the swap is watched: ``target`` must exist after each of them."""
    target = make_folder(tmp_path / "target", "old")
    staging = make_folder(tmp_path / "staging", "new")
    seen = []
    real_replace = os.replace

    def watched(source, destination):
        real_replace(source, destination)
        seen.append(target.is_dir())

    monkeypatch.setattr(utils.os, "replace", watched)
    replace_directory(staging, target)
    assert (target / "file.txt").read_text() == "new"
    assert all(seen), "the target folder was missing between two renames"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def _swap_and_die(staging: Path, target: Path, stage: str) -> None:
    """Child process: swap ``staging`` into ``target`` and die by SIGKILL at ``stage``."""
    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "between renames":  # the two-rename path used where no exchange exists
        real_replace = os.replace
        utils._exchange = lambda *_: False

        def replace(source, destination):
            if Path(source) == staging:
                die()
            real_replace(source, destination)

        utils.os.replace = replace
    else:  # right after the atomic exchange, before the old version is deleted
        real_exchange = utils._exchange

        def exchange(first, second):
            swapped = real_exchange(first, second)
            die()
            return swapped

        utils._exchange = exchange
    replace_directory(staging, target)


def _killed_swap(tmp_path: Path, stage: str) -> tuple[Path, Path]:
    target = make_folder(tmp_path / "target", "old")
    staging = utils.staging_directory(target)
    (staging / "file.txt").write_text("new")
    child = multiprocessing.get_context("fork").Process(
        target=_swap_and_die, args=(staging, target, stage)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    return target, staging


def test_a_swap_killed_between_its_renames_is_rolled_back(tmp_path):
    target, staging = _killed_swap(tmp_path, "between renames")
    # What the kill leaves: no target, the old version under a hidden backup name.
    assert not target.exists()
    (backup,) = tmp_path.glob(".target.old-*")
    assert (backup / "file.txt").read_text() == "old"
    utils.recover_directory(target)
    assert (target / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


@needs_exchange
def test_a_swap_killed_after_the_exchange_keeps_the_new_version(tmp_path):
    target, staging = _killed_swap(tmp_path, "after exchange")
    assert (target / "file.txt").read_text() == "new"
    assert (staging / "file.txt").read_text() == "old"  # the old version, not yet deleted
    utils.recover_directory(target)
    assert (target / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_recover_directory_deletes_leftovers_next_to_a_complete_folder(tmp_path):
    target = make_folder(tmp_path / "target", "current")
    make_folder(tmp_path / ".target.old-0123456789ab", "older")
    make_folder(tmp_path / ".target.staging", "half written")
    make_folder(tmp_path / "unrelated", "kept")
    utils.recover_directory(target)
    assert (target / "file.txt").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target", "unrelated"]
    utils.recover_directory(tmp_path / "never-written")  # nothing to do, no error
    assert not (tmp_path / "never-written").exists()


def test_two_backups_without_their_folder_are_refused(tmp_path):
    make_folder(tmp_path / ".target.old-0123456789ab", "one")
    make_folder(tmp_path / ".target.old-ba9876543210", "two")
    with pytest.raises(FileExistsError, match=r"2 backups of .*target.* which one is current"):
        utils.recover_directory(tmp_path / "target")
    assert len(list(tmp_path.iterdir())) == 2  # nothing deleted


def test_staging_directory_is_empty_and_replaces_a_leftover(tmp_path):
    target = tmp_path / "target"
    leftover = make_folder(tmp_path / ".target.staging", "half written")
    staging = utils.staging_directory(target)
    assert staging == leftover and staging.is_dir() and not any(staging.iterdir())


def test_fsync_file_flushes_an_existing_file_and_names_a_missing_one(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x")
    utils.fsync_file(path)
    with pytest.raises(FileNotFoundError, match="data.bin"):
        utils.fsync_file(tmp_path / "data.bin.missing")


@needs_exchange
@pytest.mark.parametrize("code", [errno.EINVAL, errno.EXDEV])
def test_exchange_falls_back_where_unsupported_and_reports_real_errors(tmp_path, monkeypatch,
                                                                        code):
    target = make_folder(tmp_path / "target", "old")
    staging = make_folder(tmp_path / "staging", "new")
    utils._exchange(staging, target)  # loads renameat2
    utils._exchange(staging, target)  # and swaps back

    def failing(*_):
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(utils, "_renameat2", failing)
    if code == errno.EINVAL:  # a file system without the flag: two renames instead
        replace_directory(staging, target)
        assert (target / "file.txt").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    else:
        with pytest.raises(OSError, match=r"Invalid cross-device link: .*staging.* -> .*target"):
            replace_directory(staging, target)
        assert (target / "file.txt").read_text() == "old"


# --- argument validation ---------------------------------------------------------------------


def test_is_integer_excludes_bools_and_floats():
    assert utils.is_integer(3) and utils.is_integer(np.int64(-2))
    assert not utils.is_integer(True) and not utils.is_integer(3.0)


def test_check_positive_number_and_check_choice_name_the_value():
    utils.check_positive_number("lr", 0.5)
    utils.check_positive_number("lr", np.float32(2))
    for value in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"lr must be a positive finite number, got"):
            utils.check_positive_number("lr", value)
    utils.check_choice("unit", "step", ("epoch", "step"))
    with pytest.raises(ValueError, match=r"unit must be one of \('epoch', 'step'\), got 'day'"):
        utils.check_choice("unit", "day", ["epoch", "step"])


def test_check_int_names_the_value_and_the_minimum():
    utils.check_int("padding", 0, minimum=0)
    for value in (-1, 2.0, True, None):
        with pytest.raises(ValueError, match=rf"padding must be an integer >= 0, got {value!r}"):
            utils.check_int("padding", value, minimum=0)


@pytest.mark.parametrize(
    "value, low_inclusive, high_inclusive, ok",
    [
        (0.0, True, True, True),
        (0.0, False, True, False),
        (1.0, True, True, True),
        (1.0, True, False, False),
        (0.5, False, False, True),
        (float("nan"), True, True, False),
        (True, True, True, False),
        ("0.5", True, True, False),
    ],
)
def test_check_in_range_writes_the_interval(value, low_inclusive, high_inclusive, ok):
    check = functools.partial(
        utils.check_in_range,
        "p",
        value,
        0,
        1,
        low_inclusive=low_inclusive,
        high_inclusive=high_inclusive,
    )
    if ok:
        check()
        return
    interval = f"{'[' if low_inclusive else '('}0, 1{']' if high_inclusive else ')'}"
    with pytest.raises(ValueError, match=rf"p must be in {re.escape(interval)}, got"):
        check()


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's malloc_trim")
def test_release_freed_memory_returns_the_heap_to_the_system():
    # 100 KB blocks come from glibc's heap; the last one, kept, stops free() from trimming
    # the heap's top, so the freed blocks stay resident until malloc_trim releases them.
    blocks = [np.ones(12_500) for _ in range(2_000)]  # ~200 MB
    keep = blocks.pop()
    del blocks
    before = _resident_mb()
    assert utils.release_freed_memory()
    assert _resident_mb() < before - 100
    assert keep.sum() == 12_500
