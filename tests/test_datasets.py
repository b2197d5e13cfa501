"""Tests for the benchmark parsers in ``reid_transformers.data.datasets``.

Every layout is faked on disk with tiny images whose names follow the release's rules.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, DatasetDict, Image, Value
from PIL import Image as PILImage

from reid_transformers.data import datasets as reid_datasets
from reid_transformers.data.datasets import (
    available_datasets,
    describe_dataset,
    load_reid_dataset,
)

MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def write_image(path: Path, color: tuple[int, int, int] = (120, 30, 200)) -> Path:
    """A 4x8 (w x h) RGB image; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (4, 8), color).save(path)
    return path


def make_folder_dataset(root: Path, files: dict[str, Iterable[str]]) -> Path:
    """Market-style folders under ``root``; ``files`` maps split -> file names."""
    for split, names in files.items():
        folder = root / MARKET_SPLITS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(folder / name)
    return root


def market_files() -> dict[str, list[str]]:
    return {
        "train": [
            "0015_c3s1_000100_01.jpg",
            "0002_c1s1_000451_03.jpg",
            "0002_c2s1_000500_01.jpg",
            "0007_c6s2_001000_02.jpg",
            "-1_c1s1_000001_00.jpg",  # junk
        ],
        "query": ["0002_c1s1_000451_04.jpg", "0007_c2s1_000010_01.jpg", "-1_c2s1_000001_00.jpg"],
        "gallery": [
            "0002_c4s1_000200_01.jpg",
            "0007_c5s1_000300_01.jpg",
            "0000_c3s1_000400_01.jpg",  # distractor
            "-1_c1s1_000002_00.jpg",  # junk
        ],
    }


@pytest.fixture()
def market_root(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "market", market_files())


def write_msmt(root: Path, train_dir: str, test_dir: str, *, with_val: bool = True) -> Path:
    lists = {
        "train": (
            train_dir,
            ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_001_03_0303noon_0100_1.jpg 1"],
        ),
        "val": (train_dir, ["0002/0002_005_15_0304afternoon_0200_0.jpg 2"]),
        "query": (test_dir, ["0100/0100_010_02_0113morning_0010_0.jpg 100"]),
        "gallery": (
            test_dir,
            [
                "0100/0100_011_04_0113noon_0020_0.jpg 100",
                "0101/0101_000_07_0113noon_0030_1.jpg 101",
            ],
        ),
    }
    for list_name, (image_dir, lines) in lists.items():
        if list_name == "val" and not with_val:
            continue
        for line in lines:
            write_image(root / image_dir / line.split()[0])
        (root / f"list_{list_name}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_csv(path: Path, rows: list[dict[str, object]], header: list[str] | None = None) -> Path:
    header = header or ["path", "pid", "camid", "split"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def generic_rows(folder: Path) -> list[dict[str, object]]:
    write_image(folder / "imgs" / "a.png")
    write_image(folder / "imgs" / "b.jpg")
    absolute = write_image(folder / "elsewhere" / "c.jpg")
    write_image(folder / "imgs" / "d.jpg")
    return [
        {"path": "imgs/b.jpg", "pid": 42, "camid": 1, "split": "train"},
        {"path": "imgs/a.png", "pid": 7, "camid": 5, "split": "train"},
        {"path": str(absolute), "pid": 7, "camid": 0, "split": "query"},
        {"path": "imgs/d.jpg", "pid": 7, "camid": 2, "split": "gallery"},
    ]


def load(name: str, data_dir: Path, **kwargs: object) -> DatasetDict:
    return load_reid_dataset(name, data_dir, progress=False, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- registry


def test_available_datasets_lists_every_layout() -> None:
    assert available_datasets() == [
        "market1501",
        "dukemtmc",
        "occluded_duke",
        "msmt17",
        "msmt17_v2",
        "cuhk03_np",
        "generic",
    ]


@pytest.mark.parametrize("spelling", ["Market-1501", "MARKET_1501", "market1501"])
def test_name_matching_ignores_case_and_separators(market_root: Path, spelling: str) -> None:
    ds = load(spelling, market_root)
    assert ds["train"].info.dataset_name == "market1501"


def test_unknown_name_lists_known_datasets(market_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'viper'") as excinfo:
        load("viper", market_root)
    for known in available_datasets():
        assert known in str(excinfo.value)


# ---------------------------------------------------------------------------- market1501


def test_market_columns_features_and_lazy_images(market_root: Path) -> None:
    ds = load("market1501", market_root)
    assert isinstance(ds, DatasetDict)
    assert list(ds) == ["train", "query", "gallery"]
    for split in ds.values():
        assert split.column_names == ["image", "pid", "camid", "path"]
        assert isinstance(split.features["image"], Image)
        assert split.features["camid"] == Value("int64")
        assert split.features["path"] == Value("string")
    assert isinstance(ds["train"].features["pid"], ClassLabel)
    assert ds["query"].features["pid"] == Value("int64")
    assert ds["gallery"].features["pid"] == Value("int64")
    # Stored as a path, decoded only on access.
    assert ds["query"].with_format("arrow")["image"][0]["bytes"].as_py() is None
    row = ds["query"][0]
    assert isinstance(row["image"], PILImage.Image)
    assert row["image"].size == (4, 8)
    assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()


def test_market_train_relabelling_keeps_original_ids(market_root: Path) -> None:
    train = load("market1501", market_root)["train"]
    pid_feature = train.features["pid"]
    assert pid_feature.names == ["2", "7", "15"]
    assert [pid_feature.int2str(label) for label in range(3)] == ["2", "7", "15"]
    for row in train:
        original = int(Path(row["path"]).name.split("_")[0])
        assert int(pid_feature.int2str(row["pid"])) == original
    # Sorted file order: 0002_c1, 0002_c2, 0007_c6, 0015_c3.
    assert train["pid"][:] == [0, 0, 1, 2]
    assert train["camid"][:] == [0, 1, 5, 2]


def test_market_junk_dropped_and_distractor_only_in_gallery(tmp_path: Path) -> None:
    files = market_files()
    files["train"].append("0000_c1s1_000900_01.jpg")
    files["query"].append("0000_c1s1_000901_01.jpg")
    ds = load("market1501", make_folder_dataset(tmp_path / "m", files))
    for split in ds.values():
        assert all("/-1_" not in path for path in split["path"])
    assert "0" not in ds["train"].features["pid"].names
    assert len(ds["train"]) == 4
    assert 0 not in ds["query"]["pid"][:]
    assert sorted(ds["query"]["pid"][:]) == [2, 7]
    assert sorted(ds["gallery"]["pid"][:]) == [0, 2, 7]


def test_market_camids_are_zero_based_and_query_keeps_original(market_root: Path) -> None:
    ds = load("market1501", market_root)
    by_name = {
        Path(p).name: (pid, cam)
        for p, pid, cam in zip(
            ds["gallery"]["path"], ds["gallery"]["pid"], ds["gallery"]["camid"], strict=True
        )
    }
    assert by_name == {
        "0000_c3s1_000400_01.jpg": (0, 2),
        "0002_c4s1_000200_01.jpg": (2, 3),
        "0007_c5s1_000300_01.jpg": (7, 4),
    }


def test_market_ignores_non_images_and_hidden_files_and_accepts_png(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "m", market_files())
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "query" / "._0002_c1s1_000451_04.jpg").write_bytes(b"resource fork")
    write_image(root / "query" / "0015_c1s1_000001_01.PNG")
    ds = load("market1501", root)
    assert len(ds["gallery"]) == 3
    assert sorted(ds["query"]["pid"][:]) == [2, 7, 15]


def test_split_folders_are_searched_recursively_like_image_folders(
    market_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One rule for every folder of images (benchmark splits and --images alike): image
    # files at any depth count; hidden files and folders do not.
    nested = write_image(market_root / "bounding_box_test" / "cam4" / "0002_c4s1_000999_01.jpg")
    deeper = write_image(market_root / "query" / "a" / "b" / "0015_c2s1_000001_01.png")
    write_image(market_root / "query" / ".cache" / "0002_c1s1_000001_01.jpg")
    with caplog.at_level(logging.WARNING, logger=reid_datasets.__name__):
        ds = load("market1501", market_root)
    assert str(nested) in ds["gallery"]["path"][:]
    assert str(deeper) in ds["query"]["path"][:]
    assert ds["query"]["path"][:] == sorted(ds["query"]["path"][:])
    assert len(ds["query"]) == 3 and len(ds["gallery"]) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "market1501 query: ignored 1 entry under" in warnings[0]
    assert ".cache/" in warnings[0]


def test_benchmark_folders_take_the_same_image_suffixes_as_any_folder(market_root: Path) -> None:
    # One suffix set, IMAGE_SUFFIXES, for benchmark splits and --images folders alike.
    bmp = write_image(market_root / "bounding_box_test" / "0002_c4s1_000998_01.bmp")
    tiff = write_image(market_root / "bounding_box_test" / "0007_c5s1_000998_01.TIFF")
    assert {".bmp", ".tiff"} <= set(reid_datasets.IMAGE_SUFFIXES)
    gallery = load("market1501", market_root)["gallery"]["path"][:]
    assert {str(bmp), str(tiff)} <= set(gallery)
    assert {str(bmp), str(tiff)} <= set(
        reid_datasets.find_image_files(market_root / "bounding_box_test")
    )


def test_ignored_files_are_counted_in_a_warning(
    market_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (market_root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\x00\x01")
    (market_root / "bounding_box_test" / "notes").mkdir()
    (market_root / "bounding_box_test" / "notes" / "readme.txt").write_text("hi")
    (market_root / "bounding_box_test" / "._0002_c4s1_000200_01.jpg").write_bytes(b"fork")
    # A link to a folder is not followed (it could loop, or double the split).
    (market_root / "bounding_box_test" / "more").symlink_to(market_root / "query")
    with caplog.at_level(logging.WARNING, logger=reid_datasets.__name__):
        ds = load("market1501", market_root)
    assert len(ds["gallery"]) == 3
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "market1501 gallery: ignored 4 entries under" in warning
    assert "(hidden, linked folders, or not .jpg/.jpeg/.png/.bmp/.webp/.tif/.tiff files)" in warning
    for name in ("._0002_c4s1_000200_01.jpg", "Thumbs.db", "more/", "notes/readme.txt"):
        assert name in warning
    caplog.clear()
    # A clean folder loads without a warning.
    with caplog.at_level(logging.WARNING, logger=reid_datasets.__name__):
        load("market1501", make_folder_dataset(market_root.parent / "clean", market_files()))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_loading_is_deterministic(market_root: Path) -> None:
    first = load("market1501", market_root)
    second = load("market1501", market_root)
    for split in first:
        assert first[split]["path"][:] == second[split]["path"][:]
    assert first["gallery"]["path"][:] == sorted(first["gallery"]["path"][:])


# ---------------------------------------------------------------------------- duke family


@pytest.mark.parametrize("name", ["dukemtmc", "occluded_duke"])
def test_duke_layouts_accept_eight_cameras(tmp_path: Path, name: str) -> None:
    root = make_folder_dataset(
        tmp_path / name,
        {
            "train": ["0001_c2_f0046182.jpg", "0005_c8_f0000001.jpg"],
            "query": ["0010_c1_f0000002.jpg"],
            "gallery": ["0010_c7_f0000003.jpg", "0011_c3_f0000004.jpg"],
        },
    )
    ds = load(name, root)
    assert ds["train"].features["pid"].names == ["1", "5"]
    assert ds["train"]["camid"][:] == [1, 7]
    assert ds["gallery"]["camid"][:] == [6, 2]


def test_duke_camera_out_of_range_names_file(tmp_path: Path) -> None:
    root = make_folder_dataset(
        tmp_path / "duke",
        {
            "train": ["0001_c9_f0046182.jpg"],
            "query": ["0010_c1_f1.jpg"],
            "gallery": ["0010_c2_f1.jpg"],
        },
    )
    with pytest.raises(ValueError, match=r"0001_c9_f0046182\.jpg.*c1\.\.c8"):
        load("dukemtmc", root)


def test_duke_pid_zero_is_an_ordinary_identity(tmp_path: Path) -> None:
    root = make_folder_dataset(
        tmp_path / "duke",
        {
            "train": ["0000_c1_f1.jpg", "0003_c1_f1.jpg"],
            "query": ["0004_c1_f1.jpg"],
            "gallery": ["0004_c2_f1.jpg"],
        },
    )
    assert load("dukemtmc", root)["train"].features["pid"].names == ["0", "3"]


# ---------------------------------------------------------------------------- cuhk03-np


@pytest.fixture()
def cuhk_root(tmp_path: Path) -> Path:
    root = tmp_path / "cuhk03-np"
    make_folder_dataset(
        root / "detected",
        {
            "train": ["0001_c1_1.png", "0003_c2_1.png"],
            "query": ["0700_c1_1.png"],
            "gallery": ["0700_c2_1.png"],
        },
    )
    make_folder_dataset(
        root / "labeled",
        {"train": ["0002_c1_1.png"], "query": ["0701_c2_1.png"], "gallery": ["0701_c1_1.png"]},
    )
    return root


def test_cuhk03_split_choice(cuhk_root: Path) -> None:
    detected = load("cuhk03_np", cuhk_root)
    labeled = load("CUHK03-NP", cuhk_root, cuhk03_split="labeled")
    assert detected["train"].features["pid"].names == ["1", "3"]
    assert detected["train"]["camid"][:] == [0, 1]
    assert all("/detected/" in p for p in detected["query"]["path"])
    assert labeled["train"].features["pid"].names == ["2"]
    assert labeled["query"]["pid"][:] == [701]
    assert labeled["query"]["camid"][:] == [1]
    assert labeled["train"].info.config_name == "labeled"


def test_training_and_cli_choose_the_cuhk03_split(cuhk_root: Path) -> None:
    from reid_transformers.training import ReIDTrainingArguments
    from reid_transformers.training.trainer import load_training_data

    args = ReIDTrainingArguments(
        dataset="cuhk03_np", data_dir=str(cuhk_root), cuhk03_split="labeled", progress=False
    )
    assert load_training_data(args)["query"]["pid"][:] == [701]
    with pytest.raises(ValueError, match=r"cuhk03_split must be one of .*, got 'hand'"):
        ReIDTrainingArguments(cuhk03_split="hand")


def test_cuhk03_missing_split_folder_and_bad_split_value(cuhk_root: Path) -> None:
    shutil.rmtree(cuhk_root / "labeled")
    with pytest.raises(FileNotFoundError, match="labeled"):
        load("cuhk03_np", cuhk_root, cuhk03_split="labeled")
    with pytest.raises(ValueError, match=r"cuhk03_split must be one of \('detected', 'labeled'\)"):
        load("cuhk03_np", cuhk_root, cuhk03_split="label")


# ---------------------------------------------------------------------------- msmt17


@pytest.mark.parametrize(
    ("name", "train_dir", "test_dir"),
    [("msmt17", "train", "test"), ("msmt17_v2", "mask_train_v2", "mask_test_v2")],
)
def test_msmt_lists_cameras_and_merge_val(
    tmp_path: Path, name: str, train_dir: str, test_dir: str
) -> None:
    root = write_msmt(tmp_path / name, train_dir, test_dir)
    ds = load(name, root)
    assert ds["train"].features["pid"].names == ["0", "1"]
    assert ds["train"]["camid"][:] == [0, 2]
    assert all(f"/{train_dir}/" in p for p in ds["train"]["path"])
    assert ds["query"]["pid"][:] == [100]
    assert ds["query"]["camid"][:] == [1]
    assert ds["gallery"]["camid"][:] == [3, 6]
    assert all(f"/{test_dir}/" in p for p in ds["gallery"]["path"])

    merged = load(name, root, merge_val=True)
    assert merged["train"].features["pid"].names == ["0", "1", "2"]
    assert merged["train"]["camid"][:] == [0, 2, 14]
    assert len(merged["train"]) == 3


def test_msmt_val_list_needed_only_for_merge_val(tmp_path: Path) -> None:
    root = write_msmt(tmp_path / "MSMT17_V1", "train", "test", with_val=False)
    assert len(load("msmt17", root)["train"]) == 2
    with pytest.raises(FileNotFoundError, match=r"list_val\.txt"):
        load("msmt17", root, merge_val=True)


def test_msmt_bad_line_camera_and_missing_file(tmp_path: Path) -> None:
    root = write_msmt(tmp_path / "msmt", "train", "test")
    (root / "list_query.txt").write_text("0100/0100_010_02_0113morning_0010_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query\.txt, line 1.*<relative path> <pid>"):
        load("msmt17", root)

    (root / "list_query.txt").write_text("0100/0100_010_16_0113morning_0010_0.jpg 100\n")
    with pytest.raises(ValueError, match=r"0100_010_16_0113morning_0010_0\.jpg.*1\.\.15"):
        load("msmt17", root)

    (root / "list_query.txt").write_text("0100/query0001.jpg 100\n")
    with pytest.raises(ValueError, match=r"query0001\.jpg.*0000_000_01_0303morning_0015_0\.jpg"):
        load("msmt17", root)

    (root / "list_query.txt").write_text("0100/0100_099_02_0113morning_0010_0.jpg 100\n")
    with pytest.raises(
        FileNotFoundError, match=r"line 1: image .*0100_099_02_0113.*does not exist"
    ):
        load("msmt17", root, verify_images="none")


def test_msmt_missing_or_empty_list_file_is_named(tmp_path: Path) -> None:
    root = write_msmt(tmp_path / "msmt", "train", "test")
    (root / "list_gallery.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"list_gallery\.txt has no entries"):
        load("msmt17", root)
    (root / "list_gallery.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_gallery\.txt is missing"):
        load("msmt17", root)


# ---------------------------------------------------------------------------- generic CSV


def test_generic_csv_paths_and_verbatim_camids(tmp_path: Path) -> None:
    write_csv(tmp_path / "annotations.csv", generic_rows(tmp_path))
    ds = load("generic", tmp_path)
    train = ds["train"]
    assert train.features["pid"].names == ["7", "42"]
    # CSV order is kept; camids are not shifted.
    assert [Path(p).name for p in train["path"]] == ["b.jpg", "a.png"]
    assert train["pid"][:] == [1, 0]
    assert train["camid"][:] == [1, 5]
    assert ds["query"]["path"][:] == [str(tmp_path / "elsewhere" / "c.jpg")]
    assert ds["gallery"]["camid"][:] == [2]
    assert isinstance(ds["gallery"][0]["image"], PILImage.Image)


def test_generic_accepts_the_csv_path_itself(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "my_labels.csv", generic_rows(tmp_path))
    assert len(load("generic", csv_path)["train"]) == 2


def test_generic_errors_name_the_row(tmp_path: Path) -> None:
    rows = generic_rows(tmp_path)
    csv_path = tmp_path / "annotations.csv"

    write_csv(
        csv_path,
        [{k: v for k, v in r.items() if k != "camid"} for r in rows],
        header=["path", "pid", "split"],
    )
    with pytest.raises(ValueError, match="lacks column.*camid"):
        load("generic", tmp_path)

    bad_split = [*rows, {"path": "imgs/a.png", "pid": 1, "camid": 0, "split": "val"}]
    write_csv(csv_path, bad_split)
    with pytest.raises(ValueError, match=r"line 6: split 'val' is not one of train, query"):
        load("generic", tmp_path)

    bad_pid = [*rows, {"path": "imgs/a.png", "pid": "seven", "camid": 0, "split": "train"}]
    write_csv(csv_path, bad_pid)
    with pytest.raises(ValueError, match=r"line 6: pid 'seven' is not an integer"):
        load("generic", tmp_path)

    missing_image = [*rows, {"path": "imgs/zzz.jpg", "pid": 1, "camid": 0, "split": "train"}]
    write_csv(csv_path, missing_image)
    with pytest.raises(FileNotFoundError, match=r"line 6: image .*zzz\.jpg does not exist"):
        load("generic", tmp_path)

    write_csv(csv_path, [r for r in rows if r["split"] != "gallery"])
    with pytest.raises(ValueError, match="no rows with split 'gallery'"):
        load("generic", tmp_path)


def test_generic_same_image_in_two_splits_is_leakage_naming_both_rows(tmp_path: Path) -> None:
    rows = generic_rows(tmp_path)
    # The train image imgs/b.jpg again, spelt differently, in the gallery under another pid.
    leak = {"path": str(tmp_path / "imgs" / ".." / "imgs" / "b.jpg"), "pid": 5, "camid": 0,
            "split": "gallery"}
    write_csv(tmp_path / "annotations.csv", [*rows, leak])
    with pytest.raises(ValueError, match="1 image appears in more than one row") as excinfo:
        load("generic", tmp_path)
    message = str(excinfo.value)
    assert f"{tmp_path / 'imgs' / 'b.jpg'}: line 2 (train, pid 42) and line 6 (gallery, pid 5)" in (
        message
    )
    assert "leaks" in message


def test_generic_same_image_twice_in_one_split_is_refused(tmp_path: Path) -> None:
    rows = generic_rows(tmp_path)
    repeat = [dict(rows[3], pid=8), dict(rows[1], camid=0)]
    write_csv(tmp_path / "annotations.csv", [*rows, *repeat])
    with pytest.raises(ValueError, match="2 images appear in more than one row") as excinfo:
        load("generic", tmp_path)
    message = str(excinfo.value)
    assert "d.jpg: line 5 (gallery, pid 7) and line 6 (gallery, pid 8)" in message
    assert "a.png: line 3 (train, pid 7) and line 7 (train, pid 7)" in message


def test_generic_missing_annotations_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"annotations\.csv"):
        load("generic", tmp_path)


# ---------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    ("name", "release"),
    [
        ("market1501", "Market-1501-v15.09.15"),
        ("market1501", "market1501"),
        ("dukemtmc", "DukeMTMC-reID"),
        ("occluded_duke", "Occluded_Duke"),
    ],
)
def test_folder_layout_found_under_parent(tmp_path: Path, name: str, release: str) -> None:
    files = {
        "train": ["0001_c1_f1.jpg"],
        "query": ["0002_c1_f1.jpg"],
        "gallery": ["0002_c2_f1.jpg"],
    }
    make_folder_dataset(tmp_path / release, files)
    ds = load(name, tmp_path)
    assert f"/{release}/" in ds["train"]["path"][0]


def test_list_and_cuhk_layouts_found_under_parent(tmp_path: Path, cuhk_root: Path) -> None:
    write_msmt(tmp_path / "MSMT17_V1", "train", "test")
    write_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    assert "/MSMT17_V1/train/" in load("msmt17", tmp_path)["train"]["path"][0]
    assert "/MSMT17_V2/mask_train_v2/" in load("msmt17_v2", tmp_path)["train"]["path"][0]
    assert "/cuhk03-np/detected/" in load("cuhk03_np", cuhk_root.parent)["train"]["path"][0]


def test_dataset_not_found_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(FileNotFoundError) as excinfo:
        load("market1501", tmp_path)
    message = str(excinfo.value)
    for looked_for in ("bounding_box_train", "Market-1501-v15.09.15", str(tmp_path)):
        assert looked_for in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("market1501", tmp_path / "nope")


# ---------------------------------------------------------------------------- errors


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    files = market_files()
    del files["query"]
    root = make_folder_dataset(tmp_path / "m", files)
    with pytest.raises(FileNotFoundError, match=r"folder .*query for split 'query' is missing"):
        load("market1501", root)


def test_folder_without_images_is_named(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "m", market_files())
    for image in (root / "bounding_box_test").iterdir():
        image.unlink()
    (root / "bounding_box_test" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"bounding_box_test for split 'gallery' contains"):
        load("market1501", root)


def test_bad_file_name_names_file_and_pattern(market_root: Path) -> None:
    write_image(market_root / "query" / "person2_cam1.jpg")
    with pytest.raises(ValueError) as excinfo:
        load("market1501", market_root)
    message = str(excinfo.value)
    assert "person2_cam1.jpg" in message
    assert "'<pid>_c<camera>...' like 0002_c1s1_000451_03.jpg" in message


def test_market_camera_out_of_range(market_root: Path) -> None:
    write_image(market_root / "query" / "0002_c7s1_000451_04.jpg")
    with pytest.raises(ValueError, match=r"0002_c7s1_000451_04\.jpg has camera c7.*c1\.\.c6"):
        load("market1501", market_root)


def test_split_empty_after_filtering(tmp_path: Path) -> None:
    files = market_files()
    files["query"] = ["-1_c1s1_000001_00.jpg", "0000_c2s1_000001_00.jpg"]
    root = make_folder_dataset(tmp_path / "m", files)
    with pytest.raises(ValueError, match=r"split 'query' .* no images left .*1 junk.*1 distractor"):
        load("market1501", root)


def test_corrupt_image_is_named(market_root: Path) -> None:
    (market_root / "bounding_box_test" / "0007_c1s1_000999_01.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"1 of \d+ image files are unreadable") as excinfo:
        load("market1501", market_root)
    assert "0007_c1s1_000999_01.jpg" in str(excinfo.value)
    # verify_images="none" opens no image.
    assert len(load("market1501", market_root, verify_images="none")["gallery"]) == 4


def write_truncated_jpeg(path: Path, keep: float = 0.5) -> Path:
    """A real JPEG (noise, so the scan data is long) cut after ``keep`` of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.effect_noise((64, 128), 50).convert("RGB").save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_truncated_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.effect_noise((64, 128), 50).convert("RGB").save(path, format="PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_16bit_png(path: Path) -> Path:
    """A 16-bit greyscale PNG: PIL decodes it (mode I;16), the processor cannot convert it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((8, 4), 40000, dtype=np.uint16)).save(path)
    return path


@pytest.mark.parametrize("verify", ["header", "full"])
def test_truncated_jpeg_and_png_are_caught_by_every_verification(
    market_root: Path, verify: str
) -> None:
    write_truncated_jpeg(market_root / "query" / "0002_c3s1_000001_01.jpg")
    # Cut just before the end-of-image marker: the header and nearly all pixels are there.
    write_truncated_jpeg(market_root / "query" / "0007_c3s1_000001_01.jpg", keep=0.97)
    write_truncated_png(market_root / "bounding_box_test" / "0007_c4s1_000001_01.png")
    with pytest.raises(ValueError, match="3 of 12 image files are unreadable") as excinfo:
        load("market1501", market_root, verify_images=verify)
    message = str(excinfo.value)
    for name in ("0002_c3s1_000001_01.jpg", "0007_c3s1_000001_01.jpg", "0007_c4s1_000001_01.png"):
        assert f"{name}: OSError: image file is truncated" in message
    assert len(load("market1501", market_root, verify_images="none")["query"]) == 4


@pytest.mark.parametrize("verify", ["header", "full"])
def test_complete_files_with_trailing_bytes_pass_verification(
    market_root: Path, verify: str
) -> None:
    # Some cameras pad JPEGs or append data after the end marker; PIL reads them, so they
    # must pass (the cheap end-marker test falls back to decoding such files).
    padded = market_root / "query" / "0002_c3s1_000001_01.jpg"
    PILImage.effect_noise((16, 32), 50).convert("RGB").save(padded, format="JPEG")
    padded.write_bytes(padded.read_bytes() + b"\x00" * 7 + b"trailer")
    # A PNG cut inside its last chunk still decodes completely.
    cut_png = market_root / "query" / "0007_c3s1_000001_01.png"
    PILImage.new("RGB", (4, 8), (1, 2, 3)).save(cut_png)
    cut_png.write_bytes(cut_png.read_bytes()[:-12])
    assert len(load("market1501", market_root, verify_images=verify)["query"]) == 4


def test_header_verification_decodes_no_complete_file(
    market_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[PILImage.Image] = []
    original = PILImage.Image.load

    def recording_load(image: PILImage.Image):  # type: ignore[no-untyped-def]
        decoded.append(image)
        return original(image)

    monkeypatch.setattr(PILImage.Image, "load", recording_load)
    load("market1501", market_root, verify_images="header")
    assert decoded == []
    load("market1501", market_root, verify_images="full")
    assert len({id(image) for image in decoded}) == 9  # the images left after dropping junk


@pytest.mark.parametrize("verify", ["header", "full"])
def test_images_the_processor_cannot_convert_are_rejected(market_root: Path, verify: str) -> None:
    write_16bit_png(market_root / "bounding_box_test" / "0007_c4s1_000001_01.png")
    with pytest.raises(ValueError, match="1 of 10 image files are unreadable") as excinfo:
        load("market1501", market_root, verify_images=verify)
    assert "0007_c4s1_000001_01.png: unsupported PIL image mode 'I;16'" in str(excinfo.value)


def test_option_validation(market_root: Path) -> None:
    with pytest.raises(ValueError, match="verify_images must be one of .*, got 'fast'"):
        load("market1501", market_root, verify_images="fast")
    with pytest.raises(ValueError, match="merge_val=True only applies to msmt17"):
        load("market1501", market_root, merge_val=True)
    with pytest.raises(ValueError, match="num_workers=0"):
        load("market1501", market_root, num_workers=0)


def test_large_verification_uses_threads_and_progress_bar(
    market_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reid_datasets, "_PARALLEL_VERIFY_MIN_FILES", 2)
    ds = load_reid_dataset("market1501", market_root, num_workers=2)
    assert len(ds["gallery"]) == 3
    assert "Verifying market1501 images" in capsys.readouterr().err

    load_reid_dataset("market1501", market_root, num_workers=2, progress=False)
    assert "Verifying" not in capsys.readouterr().err

    (market_root / "query" / "0007_c1s1_000999_01.jpg").write_bytes(b"")
    (market_root / "query" / "0002_c1s1_000998_01.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="2 of 11 image files are unreadable") as excinfo:
        load_reid_dataset("market1501", market_root, num_workers=2, progress=False)
    assert "0007_c1s1_000999_01.jpg" in str(excinfo.value)
    assert "0002_c1s1_000998_01.jpg" in str(excinfo.value)


def test_small_verification_shows_no_progress_bar(
    market_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_reid_dataset("market1501", market_root)
    assert "Verifying" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- describe


def test_describe_dataset_table(market_root: Path) -> None:
    ds = load("market1501", market_root)
    lines = describe_dataset(ds).splitlines()
    assert lines[0].split() == ["split", "images", "identities", "cameras"]
    assert lines[1].split() == ["train", "4", "3", "4"]
    assert lines[2].split() == ["query", "2", "2", "2"]
    assert lines[3].split() == ["gallery", "3", "3", "3"]
    # Honours selections (indices mappings), not the underlying table.
    subset = DatasetDict({"gallery": ds["gallery"].select([2, 0])})
    assert describe_dataset(subset).splitlines()[1].split() == ["gallery", "2", "2", "2"]


def test_describe_dataset_rejects_bad_input(market_root: Path) -> None:
    ds = load("market1501", market_root)
    with pytest.raises(ValueError, match="lacks column.*camid"):
        describe_dataset({"query": ds["query"].remove_columns("camid")})
    with pytest.raises(ValueError, match="no splits"):
        describe_dataset({})
