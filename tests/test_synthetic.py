"""Tests for the synthetic Market-1501-style dataset generator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reid_transformers.data import synthetic
from reid_transformers.data.synthetic import (
    SYNTHETIC_FORMAT_VERSION,
    SYNTHETIC_MANIFEST_NAME,
    make_synthetic_reid,
    synthetic_dataset_info,
)

FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
LOADER_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
FULL_NAME = re.compile(r"^(?:\d{4}|-1)_c\d+s1_\d{6}_\d{2}\.jpg$")
SMALL = {
    "num_identities": 8,
    "num_cameras": 3,
    "image_size": (64, 32),
    "num_distractors": 4,
    "num_junk": 3,
    "progress": False,
}


def _records(root: Path, folder: str) -> list[tuple[int, int, Path]]:
    """(pid, camera, path) for every image in ``folder``, parsed like a Market loader."""
    records = []
    for path in sorted((root / folder).iterdir()):
        match = LOADER_PATTERN.match(path.name)
        assert match is not None, path.name
        records.append((int(match[1]), int(match[2]), path))
    return records


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.parent.iterdir() if p.name != root.name)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_reid(tmp_path_factory.mktemp("synthetic") / "small", seed=0, **SMALL)


def test_layout_and_names_follow_market1501(small_dataset: Path) -> None:
    assert sorted(p.name for p in small_dataset.iterdir()) == sorted(
        [*FOLDERS, SYNTHETIC_MANIFEST_NAME]
    )
    for folder in FOLDERS:
        records = _records(small_dataset, folder)
        assert records, folder
        for pid, camera, path in records:
            assert FULL_NAME.match(path.name), path.name
            assert 1 <= camera <= SMALL["num_cameras"]
            assert pid >= -1
    names = [p.name for folder in FOLDERS for p in (small_dataset / folder).iterdir()]
    assert len(names) == len(set(names))


def test_train_and_test_identities_are_disjoint_halves(small_dataset: Path) -> None:
    train = {pid for pid, _, _ in _records(small_dataset, "bounding_box_train")}
    test = {pid for pid, _, _ in _records(small_dataset, "bounding_box_test") if pid > 0}
    query = {pid for pid, _, _ in _records(small_dataset, "query")}
    assert train.isdisjoint(test)
    assert query == test
    assert train | test == set(range(1, SMALL["num_identities"] + 1))
    assert len(train) == len(test) == SMALL["num_identities"] // 2


def test_every_query_has_a_gallery_match_in_another_camera(small_dataset: Path) -> None:
    gallery_cameras: dict[int, set[int]] = defaultdict(set)
    for pid, camera, _ in _records(small_dataset, "bounding_box_test"):
        gallery_cameras[pid].add(camera)
    test_ids = {pid for pid in gallery_cameras if pid > 0}
    assert all(len(gallery_cameras[pid]) >= 2 for pid in test_ids)
    query_keys = [(pid, camera) for pid, camera, _ in _records(small_dataset, "query")]
    assert len(query_keys) == len(set(query_keys)), "at most one query per (id, camera)"
    for pid, camera in query_keys:
        assert gallery_cameras[pid] - {camera}, (pid, camera)


def test_train_identities_are_seen_by_two_cameras(small_dataset: Path) -> None:
    cameras: dict[int, set[int]] = defaultdict(set)
    for pid, camera, _ in _records(small_dataset, "bounding_box_train"):
        cameras[pid].add(camera)
    assert all(len(seen) >= 2 for seen in cameras.values())


def test_queries_are_not_duplicated_in_the_gallery(small_dataset: Path) -> None:
    def digests(folder: str) -> set[str]:
        files = (small_dataset / folder).iterdir()
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    query_names = {p.name for p in (small_dataset / "query").iterdir()}
    gallery_names = {p.name for p in (small_dataset / "bounding_box_test").iterdir()}
    assert query_names.isdisjoint(gallery_names)
    assert digests("query").isdisjoint(digests("bounding_box_test"))


def test_all_images_differ(small_dataset: Path) -> None:
    files = [p for folder in FOLDERS for p in (small_dataset / folder).iterdir()]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in files}) == len(files)


def test_distractors_and_junk_only_in_gallery(small_dataset: Path) -> None:
    for folder in ("bounding_box_train", "query"):
        assert all(pid > 0 for pid, _, _ in _records(small_dataset, folder))
    gallery = Counter(pid for pid, _, _ in _records(small_dataset, "bounding_box_test"))
    assert gallery[0] == SMALL["num_distractors"]
    assert gallery[-1] == SMALL["num_junk"]
    junk_names = [p.name for _, _, p in _records(small_dataset, "bounding_box_test")
                  if p.name.startswith("-")]
    assert all(name.startswith("-1_c") for name in junk_names)


def test_images_are_rgb_jpegs_of_image_size(small_dataset: Path) -> None:
    height, width = SMALL["image_size"]
    for folder in FOLDERS:
        for path in (small_dataset / folder).iterdir():
            with Image.open(path) as image:
                assert image.format == "JPEG"
                assert image.mode == "RGB"
                assert image.size == (width, height)
                image.load()


def test_manifest_describes_the_files(small_dataset: Path) -> None:
    info = synthetic_dataset_info(small_dataset)
    assert info["format_version"] == SYNTHETIC_FORMAT_VERSION
    params = info["parameters"]
    assert params["num_identities"] == SMALL["num_identities"]
    assert params["image_size"] == list(SMALL["image_size"])
    assert params["seed"] == 0
    counts = info["counts"]
    for folder, key in zip(FOLDERS, ("train_images", "query_images", "gallery_images"),
                           strict=True):
        assert counts[key] == len(list((small_dataset / folder).iterdir()))
    assert len(info["cameras"]) == SMALL["num_cameras"]
    by_pid = {record["pid"]: record for record in info["identities"]}
    assert sorted(by_pid) == list(range(1, SMALL["num_identities"] + 1))
    for pid, camera, _ in _records(small_dataset, "query"):
        assert by_pid[pid]["split"] == "test"
        assert camera in by_pid[pid]["query_cameras"]
    for pid, camera, _ in _records(small_dataset, "bounding_box_train"):
        assert by_pid[pid]["split"] == "train"
        assert camera in by_pid[pid]["cameras"]


def test_dataset_info_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No synthetic dataset manifest"):
        synthetic_dataset_info(tmp_path)
    (tmp_path / SYNTHETIC_MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        synthetic_dataset_info(tmp_path)
    (tmp_path / SYNTHETIC_MANIFEST_NAME).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="lacks the keys"):
        synthetic_dataset_info(tmp_path)


def test_same_seed_is_byte_identical_other_seed_differs(
    small_dataset: Path, tmp_path: Path
) -> None:
    again = make_synthetic_reid(tmp_path / "again", seed=0, **SMALL)
    assert _tree_bytes(again) == _tree_bytes(small_dataset)
    other = make_synthetic_reid(tmp_path / "other", seed=1, **SMALL)
    other_bytes, reference = _tree_bytes(other), _tree_bytes(small_dataset)
    shared = set(other_bytes) & set(reference)
    assert other_bytes.keys() != reference.keys() or any(
        other_bytes[k] != reference[k] for k in shared
    )


def test_output_does_not_depend_on_generation_order(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = synthetic._plan

    def reversed_plan(params: Mapping[str, Any]) -> synthetic._Plan:
        forward = plan(params)
        return dataclasses.replace(forward, shots=forward.shots[::-1])

    monkeypatch.setattr(synthetic, "_plan", reversed_plan)
    reordered = make_synthetic_reid(tmp_path / "reordered", seed=0, **SMALL)
    assert _tree_bytes(reordered) == _tree_bytes(small_dataset)


def test_cached_dataset_is_returned_without_rewriting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_synthetic_reid(tmp_path / "cached", seed=3, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached dataset must not be re-rendered")

    monkeypatch.setattr(synthetic, "_render", fail)
    assert make_synthetic_reid(tmp_path / "cached", seed=3, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_different_parameters_raise_unless_overwrite(tmp_path: Path) -> None:
    root = make_synthetic_reid(tmp_path / "data", seed=0, **SMALL)
    before = _tree_bytes(root)
    with pytest.raises(FileExistsError, match=r"seed: existing 0, requested 1.*overwrite=True"):
        make_synthetic_reid(root, seed=1, **SMALL)
    assert _tree_bytes(root) == before

    assert make_synthetic_reid(root, seed=1, overwrite=True, **SMALL) == root
    assert synthetic_dataset_info(root)["parameters"]["seed"] == 1
    assert _tree_bytes(root) != before
    assert _siblings(root) == [], "no staging or retired folders may stay behind"


def test_incomplete_dataset_is_detected(tmp_path: Path) -> None:
    root = make_synthetic_reid(tmp_path / "data", seed=0, **SMALL)
    victim = next((root / "query").iterdir())
    victim.unlink()
    with pytest.raises(FileExistsError, match="incomplete"):
        make_synthetic_reid(root, seed=0, **SMALL)
    make_synthetic_reid(root, seed=0, overwrite=True, **SMALL)
    assert victim.is_file()


def test_foreign_folders_are_never_replaced(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="without synthetic_manifest.json"):
            make_synthetic_reid(root, seed=0, overwrite=overwrite, **SMALL)
    assert (root / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        make_synthetic_reid(a_file, seed=0, **SMALL)


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert make_synthetic_reid(root, seed=0, **SMALL) == root
    assert (root / SYNTHETIC_MANIFEST_NAME).is_file()


def _fail_after(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    save = synthetic._save_jpeg
    calls = {"n": 0}

    def flaky_save(image: Image.Image, path: Path, quality: int) -> None:
        calls["n"] += 1
        if calls["n"] > count:
            raise KeyboardInterrupt("simulated interruption")
        save(image, path, quality)

    monkeypatch.setattr(synthetic, "_save_jpeg", flaky_save)


def test_interrupted_generation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    _fail_after(10, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_reid(root, seed=0, **SMALL)
    assert not root.exists()
    assert not (root / SYNTHETIC_MANIFEST_NAME).exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_synthetic_reid(tmp_path / "data", seed=0, **SMALL)
    before = _tree_bytes(root)
    _fail_after(10, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_reid(root, seed=1, overwrite=True, **SMALL)
    assert _tree_bytes(root) == before
    assert _siblings(root) == []


def test_default_root_lives_in_cache_and_depends_on_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REID_TRANSFORMERS_CACHE", str(tmp_path / "cache"))
    first = make_synthetic_reid(seed=0, **SMALL)
    assert first.parent == tmp_path / "cache" / "synthetic"
    assert first.name.startswith("ids8_cams3_64x32_seed0_")
    assert synthetic_dataset_info(first)["parameters"]["seed"] == 0
    assert make_synthetic_reid(seed=0, **SMALL) == first
    small_query = dict(SMALL, num_junk=1)
    assert make_synthetic_reid(seed=0, **small_query) != first


def test_progress_bar_is_shown_when_requested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_synthetic_reid(tmp_path / "quiet", seed=0, **SMALL)
    assert "synthetic re-ID" not in capsys.readouterr().err
    make_synthetic_reid(tmp_path / "loud", seed=0, **dict(SMALL, progress=True))
    assert "synthetic re-ID" in capsys.readouterr().err


def test_attribute_values_are_shared_and_identities_distinct(tmp_path: Path) -> None:
    # 24 identities >= 2 x the largest palette (10 shirt colours).
    root = make_synthetic_reid(
        tmp_path / "attrs",
        num_identities=24,
        num_cameras=2,
        image_size=(32, 16),
        images_per_camera=(1, 1),
        num_distractors=0,
        num_junk=0,
        seed=5,
        progress=False,
    )
    identities = synthetic_dataset_info(root)["identities"]
    rows = [record["attributes"] for record in identities]
    names = set(rows[0])
    assert {"upper_color", "upper_pattern", "lower_color", "lower_type", "shoes_color",
            "hair_color", "hair_length", "hat", "bag", "skin_tone", "build"} <= names
    for name in names:
        counts = Counter(row[name] for row in rows)
        assert len(counts) >= 2, name
        unique = [value for value, n in counts.items() if n < 2]
        assert not unique, f"{name} values {unique} identify a single person"
    assert len({tuple(sorted(row.items())) for row in rows}) == len(rows)
    assert all(row["pattern_color"] != row["upper_color"] for row in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_identities": 1}, "num_identities must be an integer >= 2"),
        ({"num_identities": 10_000}, "num_identities must be <= 9999"),
        ({"num_identities": 4.0}, "num_identities must be an integer"),
        ({"num_cameras": 1}, "num_cameras must be an integer >= 2"),
        ({"image_size": (8, 32)}, "image_size must be"),
        ({"image_size": (64,)}, "image_size must be a pair"),
        ({"images_per_camera": (0, 2)}, "images_per_camera"),
        ({"images_per_camera": (3, 2)}, "images_per_camera"),
        ({"images_per_camera": (1, 250)}, "max <= 249"),
        ({"num_distractors": -1}, "num_distractors"),
        ({"num_junk": True}, "num_junk"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"train_fraction": 1.0}, r"train_fraction must be in \(0, 1\)"),
        ({"num_identities": 2, "train_fraction": 0.1}, "both splits"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    params = dict(SMALL, **kwargs)
    with pytest.raises(ValueError, match=message):
        make_synthetic_reid(tmp_path / "bad", **params)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("copies", "others"), [(2, 0), (3, 4)])
def test_identical_identities_are_made_distinct(copies: int, others: int) -> None:
    rng = np.random.default_rng(0)
    base = synthetic._sample_free_attributes(rng)
    rows = [dict(base) for _ in range(copies)]
    rows += [synthetic._sample_free_attributes(rng) for _ in range(others)]
    before = {name: Counter(row[name] for row in rows) for name in base}
    synthetic._make_distinct(rows, rng)
    assert len({tuple(sorted(row.items())) for row in rows}) == len(rows)
    assert all(row["pattern_color"] != row["upper_color"] for row in rows)
    if others:
        # Swapping with other identities keeps how often each value is used.
        assert {name: Counter(row[name] for row in rows) for name in base} == before


@pytest.mark.parametrize("size", [(16, 16), (16, 40), (50, 30), (96, 48)])
def test_renderer_handles_any_size_view_and_kind(size: tuple[int, int]) -> None:
    cameras = [synthetic._make_camera(seed, 1) for seed in range(4)]
    views = ("front", "back", "left", "right")
    for index in range(48):
        rng = np.random.default_rng(index)
        image = synthetic._render(
            cameras[index % 4],
            synthetic._sample_free_attributes(rng),
            rng,
            kind=("identity", "distractor", "junk")[index % 3],
            view=views[index % 4],
            size=size,
        )
        assert image.size == size
        assert image.mode == "RGB"
