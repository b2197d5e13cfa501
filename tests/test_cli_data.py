"""Unreadable images in the checkpoint workflows and their commands (evaluate, extract).

A truncated JPEG or a 16-bit PNG among thousands of good images must not throw away an
evaluation or an extraction: with ``skip_unreadable`` / ``--skip-unreadable`` each such file is
logged, left out and counted in the result. Every run is in-process, offline, on a tiny
LA-Transformer and a small synthetic dataset whose files are damaged in the test.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import DatasetDict

from reid_transformers.data import load_reid_dataset
from reid_transformers.evaluation import CheckpointEvaluation, ReIDMetric, evaluate_checkpoint
from reid_transformers.models.auto import load_checkpoint
from reid_transformers.retrieval import (
    EMBEDDING_FILE_KEYS,
    EmbeddingSet,
    extract_checkpoint_embeddings,
)
from reid_transformers.retrieval.embedding_set import embed_readable, image_names
from reid_transformers.retrieval.extraction import extract_embeddings

from .test_cli import run, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("shared") / "checkpoint")


def truncate_jpeg(path: Path) -> Path:
    """Replace ``path`` by a real JPEG cut in half: its header parses, its pixels do not."""
    PIL.Image.effect_noise((32, 64), 50).convert("RGB").save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def write_16bit_png(path: Path) -> Path:
    """A 16-bit greyscale PNG: it decodes (mode I;16), but has no 8-bit RGB rendering."""
    PIL.Image.fromarray(np.full((64, 32), 40000, dtype=np.uint16)).save(path)
    return path


@pytest.fixture
def broken(tmp_path, root) -> dict[str, Path]:
    """A copy of the dataset with one truncated query JPEG and one 16-bit gallery PNG."""
    copy = Path(shutil.copytree(root, tmp_path / "data"))
    query = truncate_jpeg(sorted((copy / "query").iterdir())[1])
    gallery = write_16bit_png(copy / "bounding_box_test" / "0003_c2s1_999999_01.png")
    return {"root": copy, "query": query, "gallery": gallery}


def unverified(root: Path) -> DatasetDict:
    return load_reid_dataset("market1501", root, verify_images="none", progress=False)


# ---------------------------------------------------------------------- the shared steps
def test_embed_readable_marks_the_unreadable_rows_and_image_names_names_them(
    broken, checkpoint
):
    query = unverified(broken["root"])["query"]
    model, processor = load_checkpoint(checkpoint, device="cpu")
    embeddings, readable = embed_readable(
        model, query, processor, batch_size=8, progress=False, skip_unreadable=True
    )
    assert embeddings.shape[0] == readable.shape[0] == len(query)
    unread = np.flatnonzero(~readable)
    assert image_names(query, unread) == [str(broken["query"])]
    assert np.isnan(embeddings[unread]).all() and np.isfinite(embeddings[readable]).all()
    # Without a path column an image is named by its row.
    assert image_names(query.remove_columns("path"), unread) == [f"row {unread[0]}"]


# ---------------------------------------------------------------------- evaluate_checkpoint
def test_evaluate_checkpoint_skips_unreadable_images_and_scores_the_rest(
    broken, checkpoint, caplog
):
    data = unverified(broken["root"])
    with pytest.raises(ValueError, match=r"cannot decode .*skip_unreadable=True"):
        evaluate_checkpoint(checkpoint, data, device="cpu", progress=False)

    with caplog.at_level(logging.WARNING):
        result = evaluate_checkpoint(
            checkpoint, data, device="cpu", rerank=True, skip_unreadable=True, progress=False
        )
    assert result.skipped_images == {
        "query": [str(broken["query"])],
        "gallery": [str(broken["gallery"])],
    }
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert str(broken["query"]) in logged and str(broken["gallery"]) in logged

    # The metrics are those of the readable images alone.
    model, processor = load_checkpoint(checkpoint, device="cpu")
    inputs = {}
    for split, bad in (("query", broken["query"]), ("gallery", broken["gallery"])):
        kept = data[split].filter(lambda path, bad=str(bad): path != bad, input_columns="path")
        inputs[f"{split}_embeddings"] = extract_embeddings(model, kept, processor, progress=False)
        inputs[f"{split}_pids"] = kept["pid"]
        inputs[f"{split}_camids"] = kept["camid"]
    expected = ReIDMetric().compute(distance="cosine", **inputs)
    assert result.metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result.metrics["num_valid_queries"] + result.metrics["num_skipped_queries"] == (
        len(data["query"]) - 1
    )
    assert result.reranked_metrics is not None

    table = result.format_table()
    assert "2 images could not be read and were left out (query 1, gallery 1)" in table
    again = CheckpointEvaluation.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_evaluation_results_without_skipped_images_read_and_print_as_before():
    metrics = {"mAP": 0.5, "rank-1": 0.6, "num_valid_queries": 4, "num_skipped_queries": 1}
    older = {"model": "m", "dataset": "market1501", "distance": "cosine", "flip": False,
             "metrics": metrics, "reranked_metrics": None}
    result = CheckpointEvaluation.from_dict(older)
    assert result.skipped_images == {}
    assert "could not be read" not in result.format_table()
    with pytest.raises(ValueError, match="'skipped_images' must map query/gallery to lists"):
        CheckpointEvaluation.from_dict({**older, "skipped_images": {"train": ["a.jpg"]}})


def test_a_split_with_no_readable_image_is_a_clear_error(broken, checkpoint):
    data = unverified(broken["root"])
    only_bad = data["query"].filter(lambda path: path == str(broken["query"]), input_columns="path")
    with pytest.raises(ValueError, match=r"none of the 1 'query' images could be read"):
        evaluate_checkpoint(
            checkpoint,
            {"query": only_bad, "gallery": data["gallery"]},
            device="cpu",
            skip_unreadable=True,
            progress=False,
        )


# ---------------------------------------------------------- extract_checkpoint_embeddings
def test_extract_checkpoint_embeddings_leaves_out_unreadable_images(broken, checkpoint, tmp_path):
    data = unverified(broken["root"])
    splits = {"query": data["query"], "gallery": data["gallery"]}
    with pytest.raises(ValueError, match=r"cannot decode .*skip_unreadable=True"):
        extract_checkpoint_embeddings(checkpoint, splits, device="cpu", progress=False)

    result = extract_checkpoint_embeddings(
        checkpoint, splits, device="cpu", skip_unreadable=True, progress=False
    )
    total = len(data["query"]) + len(data["gallery"])
    assert len(result) == total - 2 and np.isfinite(result.embeddings).all()
    assert str(broken["query"]) not in result.paths.tolist()
    assert str(broken["gallery"]) not in result.paths.tolist()
    assert result.skipped_paths.tolist() == [str(broken["query"]), str(broken["gallery"])]
    assert result.skipped_splits.tolist() == ["query", "gallery"]
    # The rows that were read match a plain extraction of the same images.
    model, processor = load_checkpoint(checkpoint, device="cpu")
    gallery = data["gallery"].filter(
        lambda path: path != str(broken["gallery"]), input_columns="path"
    )
    np.testing.assert_allclose(
        result.embeddings[result.splits == "gallery"],
        extract_embeddings(model, gallery, processor, progress=False),
        atol=1e-6,
    )

    path = result.save(tmp_path / "emb.npz")
    with np.load(path, allow_pickle=False) as stored:
        assert sorted(stored.files) == sorted(EMBEDDING_FILE_KEYS)
    loaded = EmbeddingSet.load(path)
    assert loaded.skipped_paths.tolist() == result.skipped_paths.tolist()
    assert loaded.skipped_splits.tolist() == ["query", "gallery"]


def test_embedding_files_without_skipped_arrays_still_load(tmp_path):
    older = tmp_path / "older.npz"
    np.savez(older, embeddings=np.ones((2, 4), np.float32), pids=np.array([1, 2]),
             camids=np.array([0, 1]), paths=np.array(["a.jpg", "b.jpg"]),
             splits=np.array(["query", "query"]), model=np.asarray("m"), flip=np.asarray(False))
    loaded = EmbeddingSet.load(older)
    assert len(loaded) == 2 and loaded.skipped_paths.tolist() == []
    assert loaded.skipped_splits.tolist() == []
    with pytest.raises(ValueError, match="one entry per skipped image"):
        EmbeddingSet(embeddings=np.ones((1, 2)), pids=[1], camids=[0], paths=["a"],
                     splits=["q"], skipped_paths=["b.jpg"], skipped_splits=[])


# ---------------------------------------------------------------------- the commands
def test_evaluate_command_stops_on_an_unreadable_image_naming_it_and_the_flag(
    capsys, broken, checkpoint
):
    code, out, err = run(
        capsys, "evaluate", "--model", checkpoint, "--dataset", "market1501",
        "--data-dir", broken["root"], "--no-progress", "--device", "cpu",
    )
    assert code == 2 and out == ""
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert broken["query"].name in line and broken["gallery"].name in line
    assert "--skip-unreadable" in line


def test_evaluate_command_with_skip_unreadable_prints_and_saves_the_count(
    capsys, caplog, broken, checkpoint, tmp_path
):
    report = tmp_path / "eval.json"
    with caplog.at_level(logging.WARNING):
        code, out, err = run(
            capsys, "evaluate", "--model", checkpoint, "--dataset", "market1501",
            "--data-dir", broken["root"], "--no-progress", "--device", "cpu",
            "--skip-unreadable", "--json", report,
        )
    assert code == 0, err
    assert "2 images could not be read and were left out (query 1, gallery 1)" in out
    logged = [record.getMessage() for record in caplog.records]
    assert any(str(broken["query"]) in message for message in logged)
    assert any(str(broken["gallery"]) in message for message in logged)
    saved = CheckpointEvaluation.load(report)
    assert saved.skipped_images == {
        "query": [str(broken["query"])],
        "gallery": [str(broken["gallery"])],
    }


def test_extract_command_with_skip_unreadable_writes_the_rest(
    capsys, broken, checkpoint, tmp_path
):
    images = broken["root"] / "bounding_box_test"
    output = tmp_path / "gallery.npz"
    base = ("extract", "--model", checkpoint, "--images", images, "--output", output,
            "--no-progress", "--device", "cpu")
    code, out, err = run(capsys, *base)
    assert code == 2 and not output.exists()
    assert "--skip-unreadable" in err and broken["gallery"].name in err

    code, out, err = run(capsys, *base, "--skip-unreadable")
    assert code == 0, err
    total = len(list(images.iterdir()))
    assert f"Wrote {total - 1} embeddings" in out
    assert f"Skipped 1 unreadable image: {broken['gallery'].resolve()}" in out
    stored = EmbeddingSet.load(output)
    assert stored.skipped_paths.tolist() == [str(broken["gallery"].resolve())]

    dataset_output = tmp_path / "all.npz"
    code, out, err = run(
        capsys, "extract", "--model", checkpoint, "--dataset", "market1501", "--data-dir",
        broken["root"], "--output", dataset_output, "--no-progress", "--device", "cpu",
        "--skip-unreadable",
    )
    assert code == 0, err
    assert "Skipped 2 unreadable images" in out
    assert EmbeddingSet.load(dataset_output).skipped_splits.tolist() == ["query", "gallery"]
