from __future__ import annotations

import importlib.util
import logging
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState, GradientState
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from torch.utils.data import DataLoader

from reid_transformers import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
    ReIDModelOutput,
)
from reid_transformers.data import make_synthetic_reid
from reid_transformers.retrieval.extraction import embedding_dataloader, extract_embeddings
from reid_transformers.retrieval.visualization import (
    MARGIN,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    QUERY_GAP,
    UNKNOWN_COLOR,
)

from .test_la_transformer import TINY

NUM_IMAGES = 21  # with batch 4 on 2 processes, the last round is padded with repeats
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "search.py"


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Random RGB crops of varying sizes, so the processor really resizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        height, width = (64, 32) if i % 3 else (40, 24)
        path = folder / f"{i:04d}_c{i % 2 + 1}s1_000000_00.png"
        PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def image_dataset(paths: list[str]) -> Dataset:
    features = Features({"image": Image(), "pid": Value("int64"), "path": Value("string")})
    return Dataset.from_dict(
        {"image": paths, "pid": list(range(len(paths))), "path": paths}, features=features
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return image_dataset(write_images(tmp_path / "images", NUM_IMAGES))


def tiny_model() -> LATransformerModel:
    torch.manual_seed(0)
    return LATransformerModel(LATransformerConfig(**TINY))


def tiny_processor() -> LATransformerImageProcessor:
    return LATransformerImageProcessor(size={"height": 32, "width": 16})


def reference_embeddings(model, dataset: Dataset, *, flip: bool = False) -> np.ndarray:
    """A plain forward pass over all images at once."""
    pixel_values = tiny_processor()(list(dataset["image"]), return_tensors="pt")["pixel_values"]
    model.eval()
    with torch.no_grad():
        embeddings = model(pixel_values).embeddings
        if flip:
            embeddings = (embeddings + model(pixel_values.flip(-1)).embeddings) / 2
    return embeddings.numpy()


@pytest.fixture
def fresh_accelerate_state():
    # Accelerate keeps process-wide singletons; start and end clean so that neither this
    # test nor the processes forked from it see another test's configuration.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# --- embedding_dataloader -------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_yields_preprocessed_batches_with_row_numbers(dataset, num_workers):
    loader = embedding_dataloader(dataset, tiny_processor(), batch_size=4, num_workers=num_workers)
    assert len(loader) == math.ceil(NUM_IMAGES / 4)
    batches = list(loader)
    assert [len(batch["index"]) for batch in batches] == [4, 4, 4, 4, 4, 1]
    index = torch.cat([batch["index"] for batch in batches])
    assert index.dtype == torch.int64 and index.tolist() == list(range(NUM_IMAGES))
    pixel_values = torch.cat([batch["pixel_values"] for batch in batches])
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == (NUM_IMAGES, 3, 32, 16)
    expected = tiny_processor()(list(dataset["image"]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, expected)


def test_dataloader_ignores_the_datasets_transform_and_honours_the_image_mode(dataset):
    grey = dataset.cast_column("image", Image(mode="L")).with_transform(lambda batch: batch)
    batch = next(iter(embedding_dataloader(grey, tiny_processor(), batch_size=3)))
    # An "L" image gives three identical channels after the processor's RGB conversion.
    processor = tiny_processor()
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    pixels = batch["pixel_values"] * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])
    assert batch["index"].tolist() == [0, 1, 2]


def test_dataloader_rejects_bad_arguments(dataset):
    processor = tiny_processor()
    with pytest.raises(TypeError, match="pick a split"):
        embedding_dataloader(DatasetDict({"gallery": dataset}), processor)
    with pytest.raises(ValueError, match="no 'image' column"):
        embedding_dataloader(dataset.remove_columns("image"), processor)
    with pytest.raises(ValueError, match="must be a datasets.Image feature"):
        embedding_dataloader(Dataset.from_dict({"image": list(dataset["path"])}), processor)
    with pytest.raises(ValueError, match="dataset is empty"):
        embedding_dataloader(dataset.select([]), processor)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        embedding_dataloader(dataset, processor, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        embedding_dataloader(dataset, processor, batch_size=True)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got -1"):
        embedding_dataloader(dataset, processor, num_workers=-1)
    with pytest.raises(TypeError, match="processor must be callable"):
        embedding_dataloader(dataset, "not a processor")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_error_names_its_path(tmp_path, num_workers):
    paths = write_images(tmp_path / "images", 5)
    Path(paths[3]).write_bytes(b"this is not a PNG file")
    loader = embedding_dataloader(
        image_dataset(paths), tiny_processor(), batch_size=2, num_workers=num_workers
    )
    with pytest.raises(
        ValueError,
        match=r"cannot decode image '.*0003_c2s1_000000_00\.png' "
        r"\(dataset row 3\)",
    ):
        list(loader)


def test_missing_image_file_raises_file_not_found_naming_it(tmp_path):
    paths = write_images(tmp_path / "images", 3)
    Path(paths[1]).unlink()
    loader = embedding_dataloader(image_dataset(paths), tiny_processor(), batch_size=3)
    with pytest.raises(FileNotFoundError, match=r"0001_c2s1_000000_00\.png' \(dataset row 1\)"):
        next(iter(loader))


def test_unprocessable_image_error_names_its_path(tmp_path):
    paths = write_images(tmp_path / "images", 3)
    # A 16-bit greyscale PNG decodes fine but has no fixed 0..255 range: the processor
    # refuses it, and the error must say which file it was.
    PIL.Image.fromarray(np.full((64, 32), 40000, dtype=np.uint16)).save(paths[2])
    loader = embedding_dataloader(image_dataset(paths), tiny_processor(), batch_size=3)
    with pytest.raises(
        ValueError,
        match=r"cannot preprocess image '.*0002_c1s1_000000_00\.png'"
        r" \(dataset row 2\): unsupported PIL image mode",
    ):
        next(iter(loader))


def test_embedded_image_without_path_is_named_by_row(tmp_path):
    paths = write_images(tmp_path / "images", 2)
    data = Dataset.from_dict(
        {"image": [{"bytes": b"garbage", "path": None}, paths[0]]},
        features=Features({"image": Image()}),
    )
    with pytest.raises(ValueError, match="cannot decode the image of dataset row 0"):
        next(iter(embedding_dataloader(data, tiny_processor())))


# --- extract_embeddings ---------------------------------------------------------------------


def test_extract_matches_a_plain_forward_pass_in_dataset_order(dataset):
    model = tiny_model()
    expected = reference_embeddings(model, dataset)
    model.train()
    model.vit.eval()  # a submodule in another mode than its parent must get it back too
    got = extract_embeddings(model, dataset, tiny_processor(), batch_size=4, progress=False)
    assert got.dtype == np.float32 and got.shape == (NUM_IMAGES, 4 * 32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.training and not model.vit.training and model.row_classifiers.training


def test_extract_restores_modes_when_the_model_fails(dataset):
    class Failing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def forward(self, pixel_values):
            assert not self.training
            raise RuntimeError("boom")

    model = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        extract_embeddings(model, dataset, tiny_processor(), progress=False)
    assert model.training and model.layer.training


def test_flip_averages_each_embedding_with_its_mirror_without_renormalising(dataset):
    model = tiny_model()
    got = extract_embeddings(model, dataset, tiny_processor(), flip=True, progress=False)
    np.testing.assert_allclose(got, reference_embeddings(model, dataset, flip=True), atol=1e-6)
    norms = np.linalg.norm(got, axis=1)
    assert (norms < 1 - 1e-4).all()  # LA-Transformer embeddings are unit norm; their mean not


def test_bfloat16_autocast_gives_float32_close_to_full_precision(dataset):
    model = tiny_model()
    full = extract_embeddings(model, dataset, tiny_processor(), progress=False)
    half = extract_embeddings(
        model, dataset, tiny_processor(), dtype=torch.bfloat16, progress=False
    )
    assert half.dtype == np.float32
    assert not np.array_equal(half, full)  # autocast really ran in bfloat16
    np.testing.assert_allclose(half, full, atol=0.05)
    with pytest.raises(ValueError, match=r"dtype must be one of .* got torch.int8"):
        extract_embeddings(model, dataset, tiny_processor(), dtype=torch.int8)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        extract_embeddings(model, dataset, tiny_processor(), dtype="bfloat16")


def test_device_argument_is_where_batches_go(dataset):
    model = tiny_model()
    got = extract_embeddings(model, dataset, tiny_processor(), device="cpu", progress=False)
    np.testing.assert_allclose(got, reference_embeddings(model, dataset), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="meta"):
        # Sent to another device than the model's, the forward pass fails: proof that the
        # batches went where `device` said.
        extract_embeddings(model, dataset, tiny_processor(), device="meta", progress=False)


class _ShuffledRows(torch.utils.data.Dataset):
    """Preprocessed rows with their row numbers, for loaders built by hand."""

    def __init__(self, pixel_values: torch.Tensor) -> None:
        self.pixel_values = pixel_values

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[row], "index": torch.tensor(row)}


def test_a_dataloader_in_any_order_gives_rows_in_dataset_order(dataset):
    model = tiny_model()
    expected = reference_embeddings(model, dataset)
    pixel_values = tiny_processor()(list(dataset["image"]), return_tensors="pt")["pixel_values"]
    torch.manual_seed(1)
    shuffled = DataLoader(_ShuffledRows(pixel_values), batch_size=5, shuffle=True)
    got = extract_embeddings(model, shuffled, progress=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ours = embedding_dataloader(dataset, tiny_processor(), batch_size=8)
    np.testing.assert_allclose(extract_embeddings(model, ours, progress=False), got, atol=1e-6)


def test_a_loader_that_drops_rows_is_refused(dataset):
    pixel_values = torch.zeros(NUM_IMAGES, 3, 32, 16)
    dropping = DataLoader(_ShuffledRows(pixel_values), batch_size=4, drop_last=True)
    with pytest.raises(
        ValueError,
        match=r"each of 0\.\.20 exactly once, got 20 rows: "
        r"missing \[20\], repeated \[\]",
    ):
        extract_embeddings(tiny_model(), dropping, progress=False)


def test_extract_rejects_bad_inputs(dataset):
    model, processor = tiny_model(), tiny_processor()
    loader = embedding_dataloader(dataset, processor)
    with pytest.raises(ValueError, match="processor must be None when a DataLoader is given"):
        extract_embeddings(model, loader, processor)
    with pytest.raises(ValueError, match="a processor is required"):
        extract_embeddings(model, dataset)
    with pytest.raises(TypeError, match="got list"):
        extract_embeddings(model, [1, 2, 3], processor)
    with pytest.raises(ValueError, match="cannot be combined with accelerator"):
        extract_embeddings(model, dataset, processor, device="cpu", accelerator=object())
    tuples = DataLoader([(torch.zeros(3, 32, 16), 0)], batch_size=1)
    with pytest.raises(ValueError, match="mapping with 'pixel_values' and 'index'"):
        extract_embeddings(model, tuples, progress=False)
    no_index = DataLoader([{"pixel_values": torch.zeros(3, 32, 16)}], batch_size=1)
    with pytest.raises(ValueError, match=r"got \['pixel_values'\]"):
        extract_embeddings(model, no_index, progress=False)
    float_index = DataLoader([{"pixel_values": torch.zeros(3, 32, 16), "index": 0.0}], batch_size=1)
    with pytest.raises(ValueError, match="integer tensor"):
        extract_embeddings(model, float_index, progress=False)
    with pytest.raises(ValueError, match="yielded no batches"):
        extract_embeddings(model, DataLoader(_ShuffledRows(torch.zeros(0, 3, 32, 16))))


def test_model_output_without_embeddings_is_refused(dataset):
    class Plain(torch.nn.Module):
        def forward(self, pixel_values):
            return pixel_values.flatten(1)

    class WrongShape(torch.nn.Module):
        def forward(self, pixel_values):
            return ReIDModelOutput(embeddings=pixel_values)

    with pytest.raises(ValueError, match="returned Tensor without an 'embeddings' tensor"):
        extract_embeddings(Plain(), dataset, tiny_processor(), progress=False)
    with pytest.raises(ValueError, match=r"shape \(21, 3, 32, 16\).*expected \(B, D\)"):
        extract_embeddings(WrongShape(), dataset, tiny_processor(), batch_size=64, progress=False)


def test_progress_bar_is_shown_only_when_asked(dataset, capsys):
    model, processor = tiny_model(), tiny_processor()
    extract_embeddings(model, dataset, processor, batch_size=8, progress=False)
    assert "Extracting embeddings" not in capsys.readouterr().err
    extract_embeddings(model, dataset, processor, batch_size=8, progress=True)
    assert "3/3" in capsys.readouterr().err


# --- accelerate --------------------------------------------------------------------------------


def test_single_process_accelerator_gives_the_plain_result(dataset, fresh_accelerate_state):
    model = tiny_model()
    plain = extract_embeddings(model, dataset, tiny_processor(), batch_size=4, progress=False)
    accelerator = Accelerator(cpu=True)
    got = extract_embeddings(
        model, dataset, tiny_processor(), batch_size=4, accelerator=accelerator, progress=False
    )
    np.testing.assert_array_equal(got, plain)
    # The temporary evaluation loader is not registered with the accelerator (whose
    # save_state would checkpoint it, one more loader per evaluation).
    assert accelerator._dataloaders == []


def _two_process_worker(paths: list[str], expected: np.ndarray, out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    # The workers are forked from a process whose OpenMP pool is already running, and
    # libgomp deadlocks in a forked child that starts a parallel region of its own. With
    # OMP_NUM_THREADS unset, the Accelerator above raises torch's thread count (to the
    # physical cores), so it is forced back to 1 after it.
    torch.set_num_threads(1)
    assert accelerator.num_processes == 2
    data, model = image_dataset(paths), tiny_model()
    for batch_size in (4, 8):  # 21 rows: 6 (even) and 3 (odd) batches, both padded
        got = extract_embeddings(
            model,
            data,
            tiny_processor(),
            batch_size=batch_size,
            accelerator=accelerator,
            flip=True,
            progress=False,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Each process embedded only its own shard: its batches cover about half the rows.
    shard = embedding_dataloader(data, tiny_processor(), batch_size=4)
    from accelerate.data_loader import prepare_data_loader

    local = prepare_data_loader(
        shard, accelerator.device, num_processes=2, process_index=accelerator.process_index
    )
    seen = sorted(int(i) for batch in local for i in batch["index"])
    np.save(Path(out_dir) / f"rank{accelerator.process_index}.npy", np.array(seen))


def test_two_processes_gather_every_row_once_in_order(tmp_path, dataset, fresh_accelerate_state):
    expected = reference_embeddings(tiny_model(), dataset, flip=True)
    debug_launcher(_two_process_worker, args=(list(dataset["path"]), expected, str(tmp_path)))
    seen = [np.load(tmp_path / f"rank{rank}.npy") for rank in (0, 1)]
    assert all(len(rows) == 12 for rows in seen)  # 3 batches of 4 each, with 3 repeats
    assert sorted(set(seen[0]) | set(seen[1])) == list(range(NUM_IMAGES))


# --- examples/search.py -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_example():
    spec = importlib.util.spec_from_file_location("search_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def test_market_style_names_are_parsed(search_example):
    parse = search_example.market_style_ids
    assert parse("/x/0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse("-1_c3s2_000100_00.jpg") == (-1, 2)
    assert parse("0005_c2_f0046985.jpg") == (5, 1)
    assert parse("person.jpg") == (-1, -1)
    assert parse("0005_c0_f1.jpg") == (-1, -1)  # cameras are numbered from 1


def _rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "score"])
    return [line.split() for line in lines[start + 1 :] if line.split()[0].isdigit()]


def test_search_example_end_to_end(tmp_path, checkpoint, search_example, capsys):
    root = make_synthetic_reid(
        tmp_path / "data",
        num_identities=4,
        num_cameras=2,
        image_size=(64, 32),
        num_distractors=2,
        num_junk=1,
        progress=False,
    )
    gallery = root / "bounding_box_test"
    query = sorted((root / "query").iterdir())[0]
    query_pid = int(query.name.split("_")[0])
    output = tmp_path / "out" / "ranked.png"
    args = [
        "--model",
        str(checkpoint),
        "--gallery",
        str(gallery),
        "--query",
        str(query),
        "--top-k",
        "5",
        "--index-dir",
        str(tmp_path / "index"),
        "--output",
        str(output),
    ]
    assert search_example.main(args) == 0
    first = capsys.readouterr().out
    assert "Saved the gallery index" in first
    rows = _rows(first)
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5]
    scores = [float(row[1]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:  # pid and camid columns agree with the Market-style file name
        name = Path(row[4]).name
        assert Path(row[4]).parent == gallery.resolve()
        assert (int(row[2]), int(row[3])) == search_example.market_style_ids(name)

    # The PNG's frames: query blue, then green / red by identity (all pids are known here).
    picture = PIL.Image.open(output).convert("RGB")
    assert picture.getpixel((MARGIN, MARGIN)) == QUERY_COLOR
    cell_width = 64 + 2 * 4
    for rank, row in enumerate(rows):
        left = MARGIN + cell_width * (rank + 1) + QUERY_GAP + 6 * rank
        expected = MATCH_COLOR if int(row[2]) == query_pid else MISMATCH_COLOR
        assert picture.getpixel((left, MARGIN)) == expected

    # Second run: the saved index still fits and is reused, with the same answer.
    assert search_example.main(args) == 0
    second = capsys.readouterr().out
    assert "Reusing the gallery index" in second and _rows(second) == rows

    # --flip changes the embeddings: the stale index is detected and rebuilt.
    assert search_example.main([*args, "--flip"]) == 0
    assert "Rebuilding the gallery index" in capsys.readouterr().out


def test_search_example_with_a_saved_dataset_and_unknown_identities(
    tmp_path, checkpoint, search_example, capsys
):
    paths = write_images(tmp_path / "images", 4)
    query = tmp_path / "person.png"  # no Market-style name: identity unknown
    PIL.Image.fromarray(np.zeros((64, 32, 3), dtype=np.uint8)).save(query)
    features = Features({"image": Image(), "pid": ClassLabel(names=["a", "b"])})
    saved = tmp_path / "saved"
    DatasetDict(
        {"gallery": Dataset.from_dict({"image": paths, "pid": [0, 1, 0, 1]}, features=features)}
    ).save_to_disk(saved)
    output = tmp_path / "ranked.png"
    args = [
        "--model",
        str(checkpoint),
        "--gallery",
        str(saved),
        "--query",
        str(query),
        "--top-k",
        "10",
        "--output",
        str(output),
    ]
    assert search_example.main(args) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 4  # top-k is clipped to the gallery size
    assert {row[3] for row in rows} == {"-1"} and {row[4] for row in rows} == {"None"}
    picture = PIL.Image.open(output).convert("RGB")
    left = MARGIN + (64 + 8) + QUERY_GAP
    assert picture.getpixel((left, MARGIN)) == UNKNOWN_COLOR


def test_search_example_rejects_bad_arguments(tmp_path, checkpoint, search_example, capsys):
    image = tmp_path / "q.png"
    PIL.Image.fromarray(np.zeros((8, 4, 3), dtype=np.uint8)).save(image)
    base = ["--model", str(checkpoint), "--gallery", str(tmp_path), "--query", str(image)]
    with pytest.raises(SystemExit):
        search_example.main([*base[:5], str(tmp_path / "missing.jpg")])
    assert "is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_example.main([*base, "--top-k", "0"])
    assert "--top-k must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_example.main([*base, "--output", "ranked.jpg"])
    assert "--output must end in .png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no image files .* under {empty}"):
        search_example.image_folder_dataset(empty)


# --- unreadable images (issue 13, item 11) --------------------------------------------------


def break_images(paths: list[str], rows: dict[int, str]) -> None:
    """Damage ``paths[row]`` in place: ``truncated`` (a real JPEG cut in half), ``16bit`` (a
    PNG that decodes to mode I;16, which the processor cannot convert) or ``missing``."""
    for row, damage in rows.items():
        path = Path(paths[row])
        if damage == "truncated":
            PIL.Image.effect_noise((32, 64), 50).convert("RGB").save(path, format="JPEG")
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "16bit":
            PIL.Image.fromarray(np.full((64, 32), 40000, dtype=np.uint16)).save(path)
        else:
            path.unlink()


def readable_reference(model, paths: list[str], skipped: set[int]) -> np.ndarray:
    kept = [path for row, path in enumerate(paths) if row not in skipped]
    return reference_embeddings(model, image_dataset(kept))


def test_an_unreadable_image_ends_the_extraction_with_a_hint_by_default(tmp_path):
    paths = write_images(tmp_path / "images", 9)
    break_images(paths, {6: "truncated"})
    with pytest.raises(ValueError, match=r"0006_c1s1_000000_00\.png.*skip_unreadable=True"):
        extract_embeddings(tiny_model(), image_dataset(paths), tiny_processor(), batch_size=2,
                           progress=False)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_unreadable_keeps_every_readable_row_and_logs_each_skipped_file(
    tmp_path, caplog, num_workers
):
    paths = write_images(tmp_path / "images", 9)
    # Row 6 fails to decode, row 7 to preprocess; rows 2 and 3 fill a whole batch.
    broken = {2: "missing", 3: "truncated", 6: "truncated", 7: "16bit"}
    break_images(paths, broken)
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="reid_transformers.retrieval.extraction"):
        got = extract_embeddings(
            model,
            image_dataset(paths),
            tiny_processor(),
            batch_size=2,
            num_workers=num_workers,
            skip_unreadable=True,
            progress=False,
        )
    expected = readable_reference(model, paths, set(broken))
    assert got.shape == (9, expected.shape[1]) and got.dtype == np.float32
    skipped = np.isnan(got).all(axis=1)
    assert np.flatnonzero(skipped).tolist() == sorted(broken)
    assert np.isfinite(got[~skipped]).all()
    np.testing.assert_allclose(got[~skipped], expected, rtol=1e-5, atol=1e-6)
    messages = [record.getMessage() for record in caplog.records]
    for row in broken:
        assert any(
            m.startswith("skipped an unreadable image: ")
            and f"image '{paths[row]}' (dataset row {row})" in m
            for m in messages
        ), (row, messages)
    assert "image file not found" in messages[0]
    assert "OSError: image file is truncated" in messages[1]
    assert "unsupported PIL image mode 'I;16'" in messages[3]
    assert messages[-1] == "skipped 4 of 9 images that could not be read"


def test_skip_unreadable_with_nothing_to_skip_gives_the_plain_result(dataset, caplog):
    model = tiny_model()
    plain = extract_embeddings(model, dataset, tiny_processor(), batch_size=4, progress=False)
    with caplog.at_level(logging.WARNING):
        got = extract_embeddings(
            model, dataset, tiny_processor(), batch_size=4, skip_unreadable=True, progress=False
        )
    np.testing.assert_array_equal(got, plain)
    assert not caplog.records


class _NaNModel(torch.nn.Module):
    """Finite embeddings except for the ``bad``-th image it embeds, as damaged weights or a
    float16 overflow give for some inputs."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.seen = bad, 0
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values):
        embeddings = pixel_values.mean(dim=(2, 3)) * self.scale
        rows = torch.arange(self.seen, self.seen + len(pixel_values))
        self.seen += len(pixel_values)
        embeddings[rows == self.bad] = float("nan")
        return ReIDModelOutput(embeddings=embeddings)


@pytest.mark.parametrize("skip_unreadable", [False, True])
def test_non_finite_embeddings_are_an_error_naming_the_rows(dataset, skip_unreadable):
    # A NaN row means "skipped" in a skip_unreadable result, so the model must never make one.
    with pytest.raises(ValueError, match=r"non-finite embeddings for dataset rows \[13\]"):
        extract_embeddings(
            _NaNModel(bad=13), dataset, tiny_processor(), batch_size=4,
            skip_unreadable=skip_unreadable, progress=False,
        )


def _two_process_skipping_worker(paths: list[str], expected: np.ndarray, skipped: list[int]):
    accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)  # see _two_process_worker
    got = extract_embeddings(
        tiny_model(),
        image_dataset(paths),
        tiny_processor(),
        batch_size=4,
        accelerator=accelerator,
        skip_unreadable=True,
        progress=False,
    )
    assert np.flatnonzero(np.isnan(got).all(axis=1)).tolist() == skipped
    np.testing.assert_allclose(np.delete(got, skipped, axis=0), expected, rtol=1e-5, atol=1e-6)


def test_two_processes_skip_unreadable_images_of_either_shard(tmp_path, fresh_accelerate_state):
    paths = write_images(tmp_path / "images", NUM_IMAGES)
    # Rank 0 embeds rows 0-3, 8-11, 16-19; rank 1 rows 4-7, 12-15, 20 and repeats of 0-2
    # to even out the last round: row 1 is embedded twice, and counted once.
    broken = {1: "truncated", 5: "16bit", 20: "missing"}
    break_images(paths, broken)
    expected = readable_reference(tiny_model(), paths, set(broken))
    debug_launcher(_two_process_skipping_worker, args=(paths, expected, sorted(broken)))
