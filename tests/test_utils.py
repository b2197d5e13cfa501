from __future__ import annotations

import os

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
    target = make_folder(tmp_path / "target", "old")
    staging = make_folder(tmp_path / "staging", "new")
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
