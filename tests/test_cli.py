"""The reid-transformers command and the library functions behind it, offline.

Every command runs in-process through `main` on a tiny LA-Transformer and a small synthetic
dataset; `push` goes to the local fake Hub of tests/fake_hub.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict, Features, Image
from huggingface_hub import ModelCard, constants

from reid_transformers import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
    __version__,
)
from reid_transformers.cli import PROG, build_parser, main, run_command
from reid_transformers.data import load_reid_dataset
from reid_transformers.evaluation import CheckpointEvaluation, evaluate_checkpoint, evaluate_ranking
from reid_transformers.hub import write_model_card
from reid_transformers.models.auto import checkpoint_source, load_checkpoint
from reid_transformers.retrieval import (
    EMBEDDING_FILE_KEYS,
    EmbeddingSet,
    extract_checkpoint_embeddings,
)
from reid_transformers.retrieval.extraction import extract_embeddings
from reid_transformers.retrieval.search import (
    GallerySearch,
    PreparedIndex,
    RankedMatch,
    image_folder_dataset,
    load_gallery,
    market_style_ids,
    prepare_gallery_index,
    search_gallery,
)

from .fake_hub import FakeHub, use_fake_hub
from .test_la_transformer import TINY

TOKEN = "hf_fake_write_token"
REPO = "org/tiny-la"
COMMANDS = ("train", "evaluate", "extract", "export", "search", "card", "push")
TINY_OVERRIDES = {
    "patch_size": 8, "patch_stride": 8, "hidden_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 4, "intermediate_size": 64, "classifier_hidden_size": 16,
}
METRICS = {"mAP": 0.5123, "rank-1": 0.7, "rank-5": 0.85, "rank-10": 0.9, "mINP": 0.21,
           "num_valid_queries": 5, "num_skipped_queries": 0}
RERANKED = {"mAP": 0.6, "rank-1": 0.74, "rank-5": 0.86, "rank-10": 0.91, "mINP": 0.3}


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def data(root) -> DatasetDict:
    return load_reid_dataset("market1501", root, progress=False)


def save_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    LATransformerModel(LATransformerConfig(**TINY)).save_pretrained(folder)
    LATransformerImageProcessor(size={"height": 32, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "checkpoint")


@pytest.fixture(scope="module")
def shared_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint that tests only read."""
    return save_checkpoint(tmp_path_factory.mktemp("shared") / "checkpoint")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`main(argv)`'s exit code (also when argparse exits) and its stdout / stderr."""
    capsys.readouterr()  # drop what fixtures printed (progress bars of save_pretrained)
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def card_metadata(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split("---\n")[1])


def reference_embeddings(folder: Path, dataset: Dataset) -> np.ndarray:
    model, processor = load_checkpoint(folder, device="cpu")
    return extract_embeddings(model, dataset, processor, progress=False)


# ---------------------------------------------------------------------- help and errors
def test_top_level_help_lists_every_command_with_a_first_run(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert out.startswith(f"usage: {PROG}")
    for name in COMMANDS:
        assert f"    {name} " in out
    assert f"{PROG} train --preset tiny" in out and f"{PROG} evaluate --model" in out


@pytest.mark.parametrize("command", COMMANDS[1:])
def test_every_command_help_describes_it_with_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: {PROG} {command} [-h] --model CKPT")
    assert f"example:\n  {PROG} {command} --model " in out
    # One spelling per flag in the option list; the underscore one still parses.
    assert "--batch_size" not in out and "--repo_id" not in out


def test_train_help_is_the_trainers_flags_under_the_command_name(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    assert out.startswith(f"usage: {PROG} train [-h] [--model MODEL] [--preset PRESET]")
    for flag in ("--identities_per_batch", "--blockwise_unfreezing", "--model_overrides"):
        assert flag in out
    assert f"example:\n  {PROG} train --preset tiny" in out


def test_version_and_module_entry_point(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"{PROG} {__version__}\n"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "reid_transformers.cli", "evaluate", "--model", "no/such/ckpt"],
        capture_output=True, text=True, env=environment, timeout=120,
    )
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert line.startswith(f"{PROG} evaluate: error: checkpoint folder no/such/ckpt does not exist")


def test_usage_errors_are_one_line_with_exit_code_2(capsys, tmp_path, shared_checkpoint, root):
    code, _, err = run(capsys)
    assert code == 2 and "required: COMMAND" in one_error_line(err)
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in one_error_line(err)
    code, _, err = run(capsys, "evaluate", "--model", shared_checkpoint, "--distance", "l1")
    assert code == 2 and "invalid choice: 'l1'" in one_error_line(err)
    code, _, err = run(capsys, "evaluate", "--model", shared_checkpoint, "--batch_size", "0")
    assert code == 2 and "--batch-size must be >= 1, got 0" in one_error_line(err)

    missing = tmp_path / "missing"
    code, _, err = run(capsys, "evaluate", "--model", missing, "--dataset", "market1501",
                       "--data-dir", root)
    assert code == 2
    assert f"checkpoint folder {missing} does not exist" in one_error_line(err)
    (tmp_path / "incomplete").mkdir()
    code, _, err = run(capsys, "evaluate", "--model", tmp_path / "incomplete")
    assert code == 2
    assert "lacks config.json, preprocessor_config.json, model.safetensors" in one_error_line(err)
    code, _, err = run(capsys, "evaluate", "--model", shared_checkpoint, "--dataset", "mars",
                       "--data-dir", root)
    assert code == 2 and "unknown dataset 'mars'" in one_error_line(err)
    code, _, err = run(capsys, "evaluate", "--model", shared_checkpoint, "--dataset",
                       "market1501", "--data-dir", missing)
    assert code == 2 and f"data_dir {missing} does not exist" in one_error_line(err)
    code, _, err = run(capsys, "train")
    assert code == 2 and "--preset tiny" in one_error_line(err)
    code, _, err = run(capsys, "train", "--epochs", "1", "--no_such_flag")
    assert code == 2 and "unrecognized arguments: --no_such_flag" in one_error_line(err)
    code, _, err = run(capsys, "train", "--optimizer", "lion")
    assert code == 2 and "optimizer must be one of" in one_error_line(err)


def test_traceback_flag_shows_the_error_itself(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--traceback", "card", "--model", str(tmp_path / "missing")])


def test_run_command_runs_one_command_under_its_own_name(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        run_command("card", ["--help"], prog="make_card.py")
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: make_card.py [-h] --model CKPT")
    assert run_command("card", ["--model", str(tmp_path)], prog="make_card.py") == 2
    assert one_error_line(capsys.readouterr().err).startswith("make_card.py: error: ")
    with pytest.raises(ValueError, match="unknown command 'fly'"):
        run_command("fly", [])
    assert build_parser("tool").prog == "tool"


# ---------------------------------------------------------------------- train
def test_train_runs_the_trainer_and_writes_checkpoints(capsys, tmp_path, root):
    output = tmp_path / "run"
    code, out, err = run(
        capsys, "train", "--preset", "tiny", "--epochs", "1",
        "--model_overrides", json.dumps(TINY_OVERRIDES), "--dataset", "market1501",
        "--data_dir", root, "--output_dir", output, "--identities_per_batch", "4",
        "--instances_per_identity", "2", "--batch_size_eval", "16", "--no_progress",
    )
    assert code == 0, err
    assert f"Checkpoints: {output / 'best'}, {output / 'last'}" in out
    printed = json.loads(out[: out.index("Checkpoints:")])
    assert {"last", "best"} == set(printed) and "mAP" in printed["last"]["metrics"]
    assert printed["best"]["epoch"] <= printed["last"]["epoch"]
    config = json.loads((output / "last" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["image_size"] == [64, 32]
    assert (output / "best" / "README.md").is_file()


def test_train_help_shows_every_default_once(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    assert "(default: None)" not in out
    blocks = [" ".join(block.split()) for block in out.split("\n  --")[1:]]
    assert all(block.count("(default:") <= 1 for block in blocks)
    epochs = next(block for block in blocks if block.startswith("epochs "))
    assert "training epochs" in epochs and "(default: 30)" in epochs


def test_train_offline_without_the_presets_weights_is_one_line_saying_how_to_go_on(
    capsys, tmp_path, root, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(
        capsys, "train", "--preset", "tiny", "--model", "hat",
        "--pretrained_backbone", "microsoft/resnet-50", "--dataset", "market1501",
        "--data_dir", root, "--output_dir", tmp_path / "run", "--no_progress",
        "--identities_per_batch", "4", "--instances_per_identity", "2",
    )
    assert code == 1
    line = one_error_line(err)
    assert "'microsoft/resnet-50'" in line and "HF_HUB_OFFLINE is set" in line
    assert "--pretrained_backbone DIR" in line and "--pretrained_backbone ''" in line


# ---------------------------------------------------------------------- evaluate
def test_evaluate_prints_the_metrics_of_the_checkpoint_and_saves_json(
    capsys, tmp_path, shared_checkpoint, root, data
):
    report = tmp_path / "eval" / "results.json"
    code, out, err = run(
        capsys, "evaluate", "--model", shared_checkpoint, "--dataset", "market1501",
        "--data-dir", root, "--rerank", "--json", report, "--no-progress", "--device", "cpu",
    )
    assert code == 0, err
    assert "Loading weights" not in err and "%|" not in err  # --no-progress: no bar at all
    expected = evaluate_ranking(
        reference_embeddings(shared_checkpoint, data["query"]),
        reference_embeddings(shared_checkpoint, data["gallery"]),
        data["query"]["pid"], data["gallery"]["pid"],
        data["query"]["camid"], data["gallery"]["camid"], metric="cosine",
    )
    saved = CheckpointEvaluation.load(report)
    assert saved.metrics["mAP"] == pytest.approx(expected.mean_ap, abs=1e-6)
    assert saved.metrics["rank-1"] == pytest.approx(expected.rank(1), abs=1e-6)
    assert saved.reranked_metrics is not None and saved.dataset == "market1501"
    assert (saved.distance, saved.flip, saved.model) == ("cosine", False, str(shared_checkpoint))
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert f"{100 * expected.mean_ap:.2f}%" in rows["without"]
    assert "with" in rows
    assert f"Wrote {report}" in out
    assert [p.name for p in report.parent.iterdir()] == ["results.json"]  # no temp left

    code, out, _ = run(
        capsys, "evaluate", "--model", shared_checkpoint, "--dataset", "market1501",
        "--data_dir", root, "--json", "-", "--no-progress", "--flip",
    )
    assert code == 0
    printed = json.loads(out.splitlines()[-1])
    assert printed["flip"] is True and printed["reranked_metrics"] is None


def test_dataset_flags_choose_the_cuhk03_split(capsys, tmp_path, shared_checkpoint):
    from .test_datasets import make_folder_dataset

    root = tmp_path / "cuhk03-np"
    for split, pid in (("detected", 700), ("labeled", 701)):
        make_folder_dataset(root / split, {
            "train": [f"{pid - 600:04d}_c1_1.png"],
            "query": [f"{pid:04d}_c1_1.png"],
            "gallery": [f"{pid:04d}_c2_1.png", f"{pid:04d}_c2_2.png"],
        })
    output = tmp_path / "emb.npz"
    code, out, err = run(
        capsys, "extract", "--model", shared_checkpoint, "--dataset", "cuhk03_np",
        "--data-dir", root, "--cuhk03-split", "labeled", "--split", "gallery",
        "--output", output, "--no-progress",
    )
    assert code == 0, err
    with np.load(output, allow_pickle=False) as stored:
        assert set(stored["pids"].tolist()) == {701}


def test_evaluate_model_example_wraps_the_command(capsys, shared_checkpoint, root):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import evaluate_model
    finally:
        sys.path.pop(0)
    assert evaluate_model.main(["--model", str(shared_checkpoint), "--dataset", "market1501",
                                "--data_dir", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "without re-ranking" in out and "mAP" in json.loads(out.splitlines()[-1])["metrics"]


def test_evaluate_checkpoint_rejects_bad_input(shared_checkpoint, data):
    with pytest.raises(ValueError, match="distance must be one of"):
        evaluate_checkpoint(shared_checkpoint, data, distance="l1")
    with pytest.raises(ValueError, match="no 'gallery' split"):
        evaluate_checkpoint(shared_checkpoint, {"query": data["query"]})
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['camid'\]"):
        evaluate_checkpoint(
            shared_checkpoint,
            {"query": data["query"].remove_columns("camid"), "gallery": data["gallery"]},
        )


# ---------------------------------------------------------------------- extract
def test_extract_writes_every_split_and_refuses_to_overwrite(
    capsys, tmp_path, shared_checkpoint, root, data
):
    output = tmp_path / "out" / "all.npz"
    base = ("extract", "--model", shared_checkpoint, "--output", output, "--no-progress")
    code, out, err = run(capsys, *base, "--dataset", "market1501", "--data-dir", root)
    assert code == 0, err
    sizes = {split: len(data[split]) for split in ("train", "query", "gallery")}
    total = sum(sizes.values())
    expected = reference_embeddings(shared_checkpoint, data["query"])
    dim = expected.shape[1]
    assert f"Wrote {total} embeddings of dimension {dim} (train 33, query 5, gallery 30)" in out
    with np.load(output, allow_pickle=False) as stored:
        assert sorted(stored.files) == sorted(EMBEDDING_FILE_KEYS)
        assert stored["embeddings"].shape == (total, dim)
        assert stored["embeddings"].dtype == np.float32
        splits = stored["splits"].tolist()
        assert [splits.count(s) for s in sizes] == list(sizes.values())
        # Train rows carry the dataset's identities, not the 0..C-1 labels: every row's pid
        # and camid are those its Market-style file name says.
        for pid, camid, path in zip(stored["pids"], stored["camids"], stored["paths"],
                                    strict=True):
            assert (pid, camid) == market_style_ids(str(path))
        query = stored["embeddings"][sizes["train"]: sizes["train"] + sizes["query"]]
    np.testing.assert_allclose(query, expected, atol=1e-6)

    before = output.read_bytes()
    code, _, err = run(capsys, *base, "--dataset", "market1501", "--data-dir", root,
                       "--split", "query")
    assert code == 2 and "already exists; add --overwrite" in one_error_line(err)
    assert output.read_bytes() == before
    code, _, _ = run(capsys, *base, "--dataset", "market1501", "--data-dir", root,
                     "--split", "query", "--overwrite")
    assert code == 0
    assert len(EmbeddingSet.load(output)) == sizes["query"]
    assert [p.name for p in output.parent.iterdir()] == ["all.npz"]


def test_extract_from_a_folder_of_images(capsys, tmp_path, shared_checkpoint, root):
    output = tmp_path / "query.npz"
    code, _, err = run(capsys, "extract", "--model", shared_checkpoint, "--images",
                       root / "query", "--output", output, "--no-progress", "--flip")
    assert code == 0, err
    stored = EmbeddingSet.load(output)
    assert set(stored.splits.tolist()) == {"images"} and stored.flip
    assert stored.model == str(shared_checkpoint)
    assert sorted(Path(p).name for p in stored.paths) == sorted(
        p.name for p in (root / "query").iterdir())

    code, _, err = run(capsys, "extract", "--model", shared_checkpoint, "--images", root,
                       "--split", "query", "--output", tmp_path / "x.npz")
    assert code == 2 and "go with --dataset" in one_error_line(err)
    code, _, err = run(capsys, "extract", "--model", shared_checkpoint, "--images", root,
                       "--dataset", "market1501", "--output", tmp_path / "x.npz")
    assert code == 2 and "not allowed with argument" in one_error_line(err)
    code, _, err = run(capsys, "extract", "--model", shared_checkpoint, "--images", root,
                       "--output", tmp_path / "x.npy")
    assert code == 2 and "--output must end in .npz" in one_error_line(err)
    code, _, err = run(capsys, "extract", "--model", shared_checkpoint, "--images",
                       tmp_path / "nothing", "--output", tmp_path / "x.npz")
    assert code == 2 and "does not exist" in one_error_line(err)
    assert not (tmp_path / "x.npz").exists()


def test_embedding_set_validates_saves_and_loads(tmp_path):
    values = dict(embeddings=np.eye(3, 4), pids=[1, 2, -1], camids=[0, 1, -1],
                  paths=["a.jpg", "b.jpg", ""], splits=["query"] * 3, model="m", flip=True)
    embeddings = EmbeddingSet(**values)
    assert embeddings.embeddings.dtype == np.float32 and embeddings.pids.dtype == np.int64
    path = embeddings.save(tmp_path / "e.npz")
    loaded = EmbeddingSet.load(path)
    np.testing.assert_array_equal(loaded.embeddings, embeddings.embeddings)
    assert loaded.paths.tolist() == ["a.jpg", "b.jpg", ""] and loaded.model == "m" and loaded.flip
    with pytest.raises(FileExistsError, match="already exists"):
        embeddings.save(path)
    assert embeddings.save(path, overwrite=True) == path
    with pytest.raises(ValueError, match="must end in .npz"):
        embeddings.save(tmp_path / "e.npy")
    with pytest.raises(ValueError, match="one entry per image"):
        EmbeddingSet(**{**values, "pids": [1, 2]})
    with pytest.raises(ValueError, match=r"must be \(N, D\)"):
        EmbeddingSet(**{**values, "embeddings": np.zeros(3)})
    np.savez(tmp_path / "other.npz", embeddings=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="other.npz is not an embeddings file: it lacks"):
        EmbeddingSet.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="is not an embeddings file"):
        EmbeddingSet.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EmbeddingSet.load(tmp_path / "none.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "other.npz", "text.npz"]


def test_embeddings_file_is_not_replaced_without_hard_links(tmp_path, monkeypatch):
    """File systems without hard links fall back to check-then-rename, still refusing."""

    def no_links(source, target):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    embeddings = EmbeddingSet(np.ones((1, 2)), [1], [0], ["a.jpg"], ["query"])
    path = embeddings.save(tmp_path / "e.npz")
    assert EmbeddingSet.load(path).pids.tolist() == [1]
    with pytest.raises(FileExistsError, match="already exists"):
        embeddings.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]


def test_extract_checkpoint_embeddings_stores_unknown_ids_and_checks_input(
    tmp_path, shared_checkpoint
):
    image = tmp_path / "person.png"
    PIL.Image.fromarray(np.zeros((64, 32, 3), dtype=np.uint8)).save(image)
    bare = Dataset.from_dict({"image": [str(image)]}, features=Features({"image": Image()}))
    result = extract_checkpoint_embeddings(shared_checkpoint, {"crops": bare}, progress=False,
                                           device="cpu")
    assert (result.pids.tolist(), result.camids.tolist(), result.paths.tolist()) == (
        [-1], [-1], [""])
    with pytest.raises(ValueError, match="no datasets"):
        extract_checkpoint_embeddings(shared_checkpoint, {})
    with pytest.raises(ValueError, match="'crops' has no 'image' column"):
        extract_checkpoint_embeddings(shared_checkpoint,
                                      {"crops": bare.rename_column("image", "x")})
    with pytest.raises(ValueError, match="'crops' has no images"):
        extract_checkpoint_embeddings(shared_checkpoint, {"crops": bare.select([])})


# ---------------------------------------------------------------------- search
def test_search_command_ranks_the_gallery_and_reuses_its_index(capsys, tmp_path,
                                                                shared_checkpoint, root):
    query = sorted((root / "query").iterdir())[0]
    args = ("search", "--model", shared_checkpoint, "--gallery", root / "bounding_box_test",
            "--query", query, "--top-k", "3", "--index-dir", tmp_path / "index",
            "--output", tmp_path / "ranked.png", "--no-progress")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert f"Saved the gallery index to {tmp_path / 'index'}" in out
    lines = out.splitlines()
    start = lines.index(f"{'rank':>4}  {'score':>7}  {'pid':>5}  {'camid':>5}  path")
    rows = [line.split() for line in lines[start + 1: start + 4]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert PIL.Image.open(tmp_path / "ranked.png").size[0] > 0
    code, again, _ = run(capsys, *args)
    assert code == 0 and "Reusing the gallery index" in again
    code, _, err = run(capsys, *args[:-3], "--output", tmp_path / "ranked.jpg")
    assert code == 2 and "--output must end in .png" in one_error_line(err)


def test_gallery_from_folders_and_saved_datasets(tmp_path):
    folder = tmp_path / "gallery"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name in ("sub/0002_c1s1_000451_03.jpg", "person.PNG", ".hidden/0001_c1_x.jpg",
                 "notes.txt"):
        PIL.Image.new("RGB", (8, 16)).save(folder / name, format="PNG")
    gallery = image_folder_dataset(folder)
    assert [Path(p).name for p in gallery["path"]] == ["person.PNG", "0002_c1s1_000451_03.jpg"]
    assert gallery["pid"] == [-1, 2] and gallery["camid"] == [-1, 0]
    assert load_gallery(folder)["path"] == gallery["path"]
    with pytest.raises(NotADirectoryError, match="expected a folder of images"):
        image_folder_dataset(folder / "notes.txt")

    saved = tmp_path / "saved"
    Dataset.from_dict({"image": gallery["path"]}, features=Features({"image": Image()})
                      ).save_to_disk(saved)
    loaded = load_gallery(saved)
    assert loaded["pid"] == [-1, -1] and loaded["path"] == [None, None]
    no_gallery = tmp_path / "dict"
    DatasetDict({"query": loaded}).save_to_disk(no_gallery)
    with pytest.raises(ValueError, match="has no 'gallery' split"):
        load_gallery(no_gallery)
    no_images = tmp_path / "no_images"
    Dataset.from_dict({"pid": [1]}).save_to_disk(no_images)
    with pytest.raises(ValueError, match="has no 'image' column"):
        load_gallery(no_images)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gallery(tmp_path / "none")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_gallery(folder / "notes.txt")


def test_gallery_index_is_rebuilt_when_it_no_longer_fits(tmp_path, shared_checkpoint, root):
    model, processor = load_checkpoint(shared_checkpoint, device="cpu")
    gallery = load_gallery(root / "bounding_box_test")
    index_dir = tmp_path / "index"
    built = prepare_gallery_index(model, processor, gallery, index_dir=index_dir, progress=False)
    assert built.status == "built" and len(built.index) == len(gallery)
    assert built.describe() == f"Saved the gallery index to {index_dir} ({len(gallery)} images)"
    reused = prepare_gallery_index(model, processor, gallery, index_dir=index_dir)
    assert reused.status == "reused" and "Reusing" in reused.describe()

    flipped = prepare_gallery_index(model, processor, gallery, index_dir=index_dir, flip=True,
                                    progress=False)
    assert flipped.status == "rebuilt" and "embeds differently now" in flipped.reason
    smaller = prepare_gallery_index(model, processor, gallery.select(range(3)),
                                    index_dir=index_dir, flip=True, progress=False)
    assert "it holds" in smaller.reason and smaller.describe().startswith("Rebuilding")
    (index_dir / "pids.npy").write_bytes(b"corrupt")
    repaired = prepare_gallery_index(model, processor, gallery, index_dir=index_dir,
                                     progress=False)
    assert repaired.status == "rebuilt" and "cannot be loaded" in repaired.reason
    in_memory = prepare_gallery_index(model, processor, gallery, progress=False)
    assert in_memory.directory is None and "in memory" in in_memory.describe()

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="holds no saved gallery index"):
        prepare_gallery_index(model, processor, gallery, index_dir=foreign)
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_gallery_index(model, processor, gallery, index_dir=foreign / "holiday.jpg")
    with pytest.raises(ValueError, match="no images"):
        prepare_gallery_index(model, processor, gallery.select([]))
    assert (foreign / "holiday.jpg").read_bytes() == b""


def test_search_gallery_returns_ranked_rows(tmp_path, shared_checkpoint, root):
    model, processor = load_checkpoint(shared_checkpoint, device="cpu")
    gallery = load_gallery(root / "bounding_box_test")
    index = prepare_gallery_index(model, processor, gallery, progress=False).index
    query = sorted((root / "query").iterdir())[0]
    found = search_gallery(model, processor, index, gallery, query, k=1000)
    assert isinstance(found, GallerySearch) and found.picture is None
    assert len(found.matches) == len(gallery)  # k is clipped to the gallery
    assert [m.rank for m in found.matches] == list(range(1, len(gallery) + 1))
    scores = [m.score for m in found.matches]
    assert scores == sorted(scores, reverse=True)
    best = found.matches[0]
    assert isinstance(best, RankedMatch) and gallery[best.row]["path"] == best.path
    assert (best.pid, best.camid) == market_style_ids(best.path)
    assert (found.query_pid, found.query_camid) == market_style_ids(query)
    table = found.format_table().splitlines()
    assert table[0] == f"Query {query.resolve()} (pid {found.query_pid}, camid {found.query_camid})"
    assert table[2].split()[-1] == best.path

    drawn = search_gallery(model, processor, index, gallery, query, k=2,
                           output=tmp_path / "r.png")
    assert drawn.picture == tmp_path / "r.png" and drawn.picture.is_file()
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        search_gallery(model, processor, index, gallery, query, k=0)
    with pytest.raises(ValueError, match="output must end in .png"):
        search_gallery(model, processor, index, gallery, query, output=tmp_path / "r.jpg")
    with pytest.raises(ValueError, match="the index holds"):
        search_gallery(model, processor, index, gallery.select([0]), query)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        search_gallery(model, processor, index, gallery, tmp_path / "none.jpg")


def test_prepared_index_describes_every_outcome(tmp_path):
    from reid_transformers.retrieval import GalleryIndex

    index = GalleryIndex(2)
    index.add(np.eye(2))
    built = PreparedIndex(index, "built")
    assert built.describe() == "Built the gallery index in memory (2 images)"
    assert PreparedIndex(index, "rebuilt", tmp_path, "stale").describe() == (
        f"Rebuilding the gallery index at {tmp_path}: stale\n"
        f"Saved the gallery index to {tmp_path} (2 images)")


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_loading_names_what_is_wrong(tmp_path, shared_checkpoint, monkeypatch):
    assert checkpoint_source(shared_checkpoint) == str(shared_checkpoint)
    assert checkpoint_source("org/name") == "org/name"  # a Hub id, checked when loading
    model, processor = load_checkpoint(shared_checkpoint, device="cpu")
    assert not model.training and processor.size["height"] == 32
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*/a/b does not exist"):
        checkpoint_source(tmp_path / "a" / "b")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        checkpoint_source(tmp_path / "file")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError,
                       match="lacks preprocessor_config.json, model.safetensors"):
        load_checkpoint(partial)
    (partial / "preprocessor_config.json").write_text("{}")
    (partial / "model.safetensors").write_bytes(
        (shared_checkpoint / "model.safetensors").read_bytes()
    )
    (partial / "config.json").write_text("{")
    with pytest.raises(ValueError, match="cannot load checkpoint folder .*partial: .*JSON"):
        load_checkpoint(partial)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="'org/none' is not a local folder, and loading"):
        load_checkpoint("org/none")
    with pytest.raises(ValueError, match="'tpu' is not a torch device"):
        load_checkpoint(shared_checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            load_checkpoint(shared_checkpoint, device="cuda")


# ---------------------------------------------------------------------- evaluation results
def test_checkpoint_evaluation_round_trips_and_reads_bare_metrics(tmp_path):
    result = CheckpointEvaluation(metrics={**METRICS, "cmc": [0.7, 0.8]},
                                  reranked_metrics=RERANKED, model="ckpt",
                                  dataset="market1501", distance="cosine", flip=True)
    path = result.save(tmp_path / "r.json")
    assert CheckpointEvaluation.load(path) == result
    table = result.format_table().splitlines()
    assert table[0].split() == ["mAP", "rank-1", "rank-5", "rank-10", "mINP"]
    assert table[1].split()[-5:] == ["51.23%", "70.00%", "85.00%", "90.00%", "21.00%"]
    assert table[2].startswith("with re-ranking") and "60.00%" in table[2]
    assert table[3] == "5 queries evaluated, 0 skipped (no match in another camera)"

    bare = CheckpointEvaluation.from_dict({"mAP": 0.5, "rank-1": 0.6})
    assert bare.dataset is None and bare.reranked_metrics is None
    assert bare.format_table().splitlines()[1].split()[-2:] == ["50.00%", "60.00%"]
    for bad, message in (
        ([1], "expected a JSON object"),
        ({"rank-1": 0.5}, "a metrics dictionary with 'mAP'"),
        ({"metrics": METRICS, "extra": 1}, r"unknown entries \['extra'\]"),
        ({"metrics": {"rank-1": 1}}, "'metrics' must be a dictionary of metrics with 'mAP'"),
        ({"metrics": METRICS, "distance": "l1"}, "'distance' must be one of"),
        ({"metrics": METRICS, "flip": "yes"}, "'flip' must be true, false or null"),
        ({"metrics": METRICS, "dataset": 3}, "'dataset' must be a string or null"),
    ):
        with pytest.raises(ValueError, match=message):
            CheckpointEvaluation.from_dict(bad)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: "):
        CheckpointEvaluation.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="metrics file .* does not exist"):
        CheckpointEvaluation.load(tmp_path / "none.json")


# ---------------------------------------------------------------------- card
def test_card_renders_metrics_and_keeps_them_when_re_rendered(capsys, tmp_path, checkpoint):
    report = CheckpointEvaluation(metrics=METRICS, reranked_metrics=RERANKED,
                                  dataset="market1501", distance="cosine", flip=True
                                  ).save(tmp_path / "eval.json")
    code, out, err = run(capsys, "card", "--model", checkpoint, "--metrics", report,
                         "--repo-id", REPO)
    assert code == 0, err
    readme = checkpoint / "README.md"
    assert f"Wrote {readme} ('tiny-la')" in out and "Metrics on market1501" in out
    text = readme.read_text()
    assert f'AutoModel.from_pretrained("{REPO}")' in text
    assert "| Flip test (average with mirrored crop) | yes |" in text
    values = {m["name"]: m["value"] for m in
              card_metadata(readme)["model-index"][0]["results"][0]["metrics"]}
    assert values["mAP"] == 51.23 and values["mAP (re-ranked)"] == 60.0

    # Re-rendered without flags (e.g. by push --update-card): the metadata's facts stay.
    update = write_model_card(checkpoint)
    assert update.kept == ("metrics", "dataset", "model name") and update.replaced
    assert update.model_name == "tiny-la" and update.has_metrics
    again = {m["name"]: m["value"] for m in
             card_metadata(readme)["model-index"][0]["results"][0]["metrics"]}
    assert again == values
    assert 'from_pretrained("path/to/checkpoint")' in readme.read_text()

    # Another dataset: the old numbers were not measured on it and are dropped.
    code, out, _ = run(capsys, "card", "--model", checkpoint, "--dataset", "dukemtmc")
    assert code == 0 and "No metrics in the card" in out
    assert "model-index" not in card_metadata(readme) and "DukeMTMC-reID" in readme.read_text()
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith(".")) == []


def test_card_names_a_new_checkpoint_after_its_run_and_checks_input(capsys, tmp_path):
    best = save_checkpoint(tmp_path / "la-market" / "best")
    update = write_model_card(best)
    assert update.model_name == "la-market" and not update.has_metrics and not update.replaced
    assert update.kept == ()
    assert "This checkpoint has not been evaluated" in update.path.read_text()
    (tmp_path / "bare.json").write_text(json.dumps({"mAP": 0.5, "rank-1": 0.6}))
    code, _, err = run(capsys, "card", "--model", best, "--metrics", tmp_path / "bare.json")
    assert code == 2 and "need the name of the dataset" in one_error_line(err)
    code, _, err = run(capsys, "card", "--model", best, "--repo-id", "not a repo")
    assert code == 2 and "repo_id must look like 'namespace/name'" in one_error_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        write_model_card(tmp_path / "empty")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        write_model_card(tmp_path / "bare.json")


# ---------------------------------------------------------------------- push
def test_push_uploads_the_checkpoint_with_a_card_naming_the_repo(
    capsys, monkeypatch, tmp_path, checkpoint
):
    with FakeHub(token=TOKEN) as hub:
        use_fake_hub(monkeypatch, hub.endpoint, tmp_path / "hf_home")
        code, _, err = run(capsys, "push", "--model", checkpoint, "--repo-id", REPO,
                           "--token", TOKEN)
        assert code == 2 and "has no README.md model card" in one_error_line(err)
        assert hub.requests == []

        code, out, err = run(capsys, "push", "--model", checkpoint, "--repo-id", REPO,
                             "--token", TOKEN, "--update-card", "--private")
        assert code == 0, err
        assert f"Pushed {checkpoint} to {REPO}: {hub.endpoint}" in out
        assert hub.repos[REPO].private
        files = hub.files(REPO)
        assert {"model.safetensors", "config.json", "preprocessor_config.json",
                "README.md"} <= set(files)
        assert f'AutoModel.from_pretrained("{REPO}")' in files["README.md"].decode()
        assert ModelCard(files["README.md"].decode()).data.license == "apache-2.0"

        code, _, err = run(capsys, "push", "--model", checkpoint, "--repo-id", REPO,
                           "--token", "hf_wrong")
        assert code == 1
        assert "HTTP 401" in one_error_line(err) and "Nothing local was changed" in err


def test_push_offline_is_one_clear_line_and_exit_1(capsys, monkeypatch, checkpoint):
    write_model_card(checkpoint)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = run(capsys, "push", "--model", checkpoint, "--repo-id", REPO)
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert line.startswith(f"{PROG} push: error: Pushing {checkpoint} to '{REPO}' failed")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in line and "unset HF_HUB_OFFLINE" in line
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
