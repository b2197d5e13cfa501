"""Model cards that keep every fact and say what the checkpoint is, and `push --update-card`
that changes nothing local unless the upload succeeded. Offline: pushes go to the fake Hub of
tests/fake_hub.py, the `card` / `push` commands run in-process through `main`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModel

from reid_transformers import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
    hub,
)
from reid_transformers.data import load_reid_dataset
from reid_transformers.evaluation import CheckpointEvaluation, ReIDMetric
from reid_transformers.hub import render_model_card, save_model_card, write_model_card
from reid_transformers.training import ReIDTrainer, ReIDTrainingArguments

from .fake_hub import FakeHub, HubError, use_fake_hub
from .test_aaformer import TINY as AAFORMER_TINY
from .test_cli import run
from .test_hat import TINY as HAT_TINY
from .test_hub import snapshot
from .test_la_transformer import TINY as LA_TINY
from .test_pan import TINY as PAN_TINY
from .test_prct import TINY as PRCT_TINY

TOKEN = "hf_fake_write_token"
REPO = "org/tiny-la"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "hub.md"
METRICS = {"mAP": 0.5123, "rank-1": 0.7, "rank-5": 0.85, "rank-10": 0.9, "mINP": 0.21,
           "num_valid_queries": 5, "num_skipped_queries": 0}
RECIPE = {"epochs": 12, "optimizer": "adam", "learning_rate": 3e-4,
          "batch": "4 identities x 2 images", "input_size": [32, 16],
          "blockwise_unfreezing": {"unfreeze_every": 2, "lr_decay": 0.8}}
BEST = {"kind": "best", "epoch": 7, "num_epochs": 12, "selected_on": "test"}
# A small ResNet trunk, so no number of the paper's ResNet-50 can pass for the checkpoint's.
SMALL_TRUNK = {"depths": [1, 1, 1, 1], "layer_type": "basic", "hidden_sizes": [16, 32, 64, 128]}


# ---------------------------------------------------------------------- helpers
def make_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    LATransformerModel(LATransformerConfig(**LA_TINY)).save_pretrained(folder)
    LATransformerImageProcessor(size={"height": 32, "width": 16}).save_pretrained(folder)
    return folder


def trainer_inputs(**overrides) -> hub.CardInputs:
    """What the trainer records for its best checkpoint of a run on a custom folder."""
    values = dict(model_name="la-shop", data_layout="market1501", metrics=METRICS,
                  evaluation={"distance": "cosine", "flip": False}, training=RECIPE,
                  base_model="google/vit-base-patch16-224", initialisation="backbone",
                  checkpoint=BEST)
    return hub.CardInputs(**{**values, **overrides})


def trained_checkpoint(folder: Path, **overrides) -> Path:
    """A checkpoint with the card and card inputs the trainer writes."""
    make_checkpoint(folder)
    inputs = trainer_inputs(**overrides)
    inputs.save(folder)
    save_model_card(inputs.render(LATransformerConfig(**LA_TINY)), folder)
    return folder




def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def metadata(text: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL).group(1))


def index_values(text: str) -> dict[str, float]:
    return {m["name"]: m["value"] for m in metadata(text)["model-index"][0]["results"][0]
            ["metrics"]}


def card_text(**kwargs) -> str:
    return str(render_model_card(LATransformerConfig(**LA_TINY), model_name="m", **kwargs))


def card_line(text: str, label: str) -> str:
    match = re.search(rf"^- \*\*{label}:\*\* (.*)$", text, re.MULTILINE)
    assert match is not None, f"no '{label}' line in the card"
    return match.group(1)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN) as server:
        use_fake_hub(monkeypatch, server.endpoint, tmp_path / "hf_home")
        yield server


# ---------------------------------------------------------------------- push --update-card
def test_a_failed_push_with_update_card_leaves_the_local_card_as_it_was(
    capsys, monkeypatch, tmp_path, fake_hub
):
    folder = make_checkpoint(tmp_path / "la-market" / "best")
    save_model_card(render_model_card(LATransformerConfig(**LA_TINY), model_name="la-market",
                                      dataset_name="market1501", metrics=METRICS,
                                      training=RECIPE), folder)
    before = snapshot(folder)

    def refuse(**_):  # the upload itself fails, after the repository was created
        raise HubError(403, "You are not allowed to push to this repository")

    monkeypatch.setattr(fake_hub, "_commit", refuse)
    code, out, err = run(capsys, "push", "--model", folder, "--repo-id", REPO, "--token", TOKEN,
                         "--update-card")
    assert code == 1 and out == ""  # nothing claims a card was written
    line = one_error_line(err)
    assert "HTTP 403" in line and "Nothing local was changed" in line
    assert "The re-rendered card was not written either: README.md is the previous one" in line
    assert snapshot(folder) == before
    assert ("POST", f"/api/models/{REPO}/commit/main") in fake_hub.requests


def test_update_card_is_written_locally_only_after_the_upload(capsys, monkeypatch, tmp_path,
                                                              fake_hub):
    folder = trained_checkpoint(tmp_path / "la-shop" / "best")
    old_card = (folder / "README.md").read_bytes()
    inputs_file = (folder / hub.CARD_INPUTS_NAME).read_bytes()
    seen_during_upload = []
    commit = fake_hub._commit

    def recording(**kwargs):
        seen_during_upload.append((folder / "README.md").read_bytes())
        return commit(**kwargs)

    monkeypatch.setattr(fake_hub, "_commit", recording)
    code, out, err = run(capsys, "push", "--model", folder, "--repo-id", REPO, "--token", TOKEN,
                         "--update-card")
    assert code == 0, err
    assert seen_during_upload == [old_card]
    remote = fake_hub.files(REPO)
    assert (folder / "README.md").read_bytes() == remote["README.md"]
    text = remote["README.md"].decode()
    assert f'AutoModel.from_pretrained("{REPO}")' in text
    # The re-rendered card keeps what the trainer recorded.
    assert "| Learning rate | 3e-4 |" in text and "after epoch 7 of 12" in text
    assert index_values(text)["mAP"] == 51.23
    assert (folder / hub.CARD_INPUTS_NAME).read_bytes() == inputs_file == \
        remote[hub.CARD_INPUTS_NAME]
    assert out.startswith(f"Pushed {folder} to {REPO}: {fake_hub.endpoint}")
    assert f"Wrote {folder / 'README.md'} ('tiny-la')" in out
    assert "training recipe, checkpoint origin" in out


def test_push_uploads_the_given_card_in_one_commit_without_a_local_readme(tmp_path, fake_hub):
    folder = make_checkpoint(tmp_path / "checkpoint")
    card = render_model_card(LATransformerConfig(**LA_TINY), model_name="tiny", repo_id=REPO)
    hub.push_to_hub(folder, REPO, token=TOKEN, card=card)
    assert fake_hub.files(REPO)["README.md"].decode() == str(card)
    assert not (folder / "README.md").exists()
    assert len(fake_hub.repos[REPO].commits) == 2  # the repository's first commit, then ours


# ---------------------------------------------------------------------- card inputs
def test_card_metrics_keeps_the_trainers_recipe_origin_and_data(capsys, tmp_path):
    folder = trained_checkpoint(tmp_path / "la-shop" / "best")
    report = CheckpointEvaluation(
        metrics={**METRICS, "mAP": 0.6}, dataset="market1501", distance="cosine", flip=True,
    ).save(tmp_path / "eval.json")
    code, out, err = run(capsys, "card", "--model", folder, "--metrics", report)
    assert code == 0, err
    text = (folder / "README.md").read_text()
    assert index_values(text)["mAP"] == 60.0
    assert "| Flip test (average with mirrored crop) | yes |" in text
    for kept in ("| Learning rate | 3e-4 |", "| Epochs | 12 |", "| Blockwise unfreezing |",
                 "the weights after epoch 7 of 12",
                 "[`google/vit-base-patch16-224`](https://huggingface.co/google/vit-base-"
                 "patch16-224) for the trunk", "custom dataset in the Market-1501 folder layout"):
        assert kept in text, kept
    assert "Kept from the saved card inputs: dataset, model name, base model, initialisation, " \
        "training recipe, checkpoint origin." in out
    saved = hub.CardInputs.load(folder)
    assert saved.metrics["mAP"] == 0.6 and saved.evaluation == {"distance": "cosine", "flip": True}
    assert saved.training == RECIPE and saved.checkpoint == hub.CheckpointOrigin(**BEST)

    # A re-render with nothing new changes nothing.
    before = (folder / "README.md").read_text()
    update = write_model_card(folder)
    assert update.kept == ("metrics", "dataset", "model name", "base model", "initialisation",
                           "training recipe", "checkpoint origin")
    assert (folder / "README.md").read_text() == before


def test_card_inputs_save_load_and_reject_damaged_files(tmp_path, monkeypatch):
    inputs = trainer_inputs(dataset_id="acme/shop-reid", metrics={**METRICS, "cmc": [0.7, 0.8],
                                                                  "mAP": np.float32(0.5)})
    assert inputs.metrics["mAP"] == pytest.approx(0.5) and "cmc" not in inputs.metrics
    path = inputs.save(tmp_path)
    assert path == tmp_path / "card_inputs.json"
    stored = json.loads(path.read_text())  # plain JSON, nothing to unpickle
    assert stored["format"] == "reid_transformers.card_inputs" and stored["version"] == 1
    assert stored["checkpoint"] == {**BEST, "selection_metric": "mAP"}
    assert hub.CardInputs.load(tmp_path) == inputs
    assert hub.CardInputs.load(tmp_path / "missing") is None

    def replace_fails(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_fails)
        with pytest.raises(OSError, match="disk full"):
            hub.CardInputs(model_name="other").save(tmp_path)
    assert hub.CardInputs.load(tmp_path) == inputs  # the previous file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card_inputs.json"]

    for content, problem in (
        (b"\x80\x04\x95pickle", "not a valid card inputs file"),
        (b"{", "not a valid card inputs file"),
        (json.dumps({**stored, "version": 2}).encode(), "'version' must be 1"),
        (json.dumps({**stored, "recipe": {}}).encode(), r"unknown keys \['recipe'\]"),
        (json.dumps({**stored, "metrics": {"mAP": 51.2, "rank-1": 0.7}}).encode(),
         r"metrics\['mAP'\] must be a fraction"),
        (json.dumps({**stored, "checkpoint": {**BEST, "epoch": 13}}).encode(),
         "epoch 13 is after the run's last epoch"),
    ):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=problem) as error:
            hub.CardInputs.load(tmp_path)
        assert str(path) in str(error.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        write_model_card(make_checkpoint(tmp_path))  # the card command names the file too


@pytest.mark.parametrize(("fields", "message"), [
    ({"data_layout": "market-1501"}, "data_layout must be one of"),
    ({"dataset_id": "not an id"}, "dataset_id must be a Hub dataset id"),
    ({"initialisation": "imagenet"}, "initialisation must be one of"),
    ({"initialisation": "random"}, "'random' starts from no weights"),
    ({"initialisation": "checkpoint", "base_model": None}, "needs base_model"),
    ({"checkpoint": {**BEST, "selected_on": None}}, "needs selected_on"),
    ({"checkpoint": {"kind": "last", "epoch": 3, "num_epochs": 3, "selected_on": "test"}},
     "'last' checkpoint is not chosen on a split"),
    ({"checkpoint": {**BEST, "kind": "final"}}, "checkpoint kind must be one of"),
    ({"checkpoint": {**BEST, "step": 5}}, r"checkpoint has unknown keys \['step'\]"),
    ({"training": {"lr": float("nan")}}, r"training\['lr'\] must be a finite number"),
    ({"training": {"augmentation": {"flip": object()}}}, r"\['flip'\] must be a string"),
    ({"data_layout": None}, "metrics need the dataset they were measured on"),
])
def test_card_inputs_are_validated_on_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        trainer_inputs(**fields)


def test_save_card_writes_inputs_and_card_or_nothing(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint")
    config = LATransformerConfig(**LA_TINY)
    card = hub.save_card(folder, config, trainer_inputs(), repo_id=REPO)
    assert (folder / "README.md").read_text() == str(card)
    assert f'AutoModel.from_pretrained("{REPO}")' in str(card)
    assert hub.CardInputs.load(folder) == trainer_inputs()
    before = snapshot(folder)
    with pytest.raises(ValueError, match="model_name must be a non-empty string, got None"):
        hub.save_card(folder, config, trainer_inputs(model_name=None))
    with pytest.raises(ValueError, match="repo_id must look like 'namespace/name'"):
        hub.save_card(folder, config, trainer_inputs(), repo_id="no-namespace")
    assert snapshot(folder) == before  # a card that cannot be rendered writes nothing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.save_card(tmp_path / "missing", config, trainer_inputs())


def test_a_crash_between_the_two_files_leaves_a_card_the_next_render_completes(
    tmp_path, monkeypatch
):
    folder = trained_checkpoint(tmp_path / "run" / "best")
    old_card = (folder / "README.md").read_text()

    def killed(card, directory):  # the process dies after the inputs, before the card
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(hub, "save_model_card", killed)
        with pytest.raises(KeyboardInterrupt):
            write_model_card(folder, dataset="Shop cameras 2024")
    assert (folder / "README.md").read_text() == old_card  # the previous card, whole
    assert hub.CardInputs.load(folder).dataset_name == "Shop cameras 2024"
    write_model_card(folder)
    assert "Trained and evaluated on **Shop cameras 2024**" in (folder / "README.md").read_text()


def test_a_card_without_inputs_file_keeps_its_metadata_facts(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint")
    save_model_card(render_model_card(LATransformerConfig(**LA_TINY), model_name="legacy",
                                      data_layout="dukemtmc", metrics=METRICS,
                                      reranked_metrics={"mAP": 0.6, "rank-1": 0.74},
                                      base_model="org/base-reid"), folder)
    update = write_model_card(folder, save=False)
    assert not update.written and not update.inputs_found and update.kept == (
        "metrics", "dataset", "model name", "base model")
    assert update.data_layout == "dukemtmc" and update.dataset is None
    assert update.inputs.reranked_metrics == {"mAP": 0.6, "rank-1": 0.74}
    assert not (folder / hub.CARD_INPUTS_NAME).exists()


# ---------------------------------------------------------------------- the card's name
def test_default_model_name_is_the_folder_or_for_best_and_last_the_run(tmp_path):
    assert hub.default_model_name(tmp_path / "la-shop" / "best", "la_transformer") == "la-shop"
    assert hub.default_model_name(tmp_path / "la-shop" / "last", "la_transformer") == "la-shop"
    assert hub.default_model_name(tmp_path / "exported", "pan", "market1501") == "exported"
    assert hub.default_model_name("/", "pan", "market1501") == "pan-market1501"  # no name
    assert hub.default_model_name("/", "pan") == "pan-reid"


def test_training_and_the_card_command_name_a_checkpoint_alike(capsys, tmp_path, root):
    """The trainer's card and one the `card` command renders again (without the saved
    inputs, which would carry the name over) use the one naming rule."""
    run_dir = tmp_path / "la-shop"
    trunk = {key: value for key, value in LA_TINY.items()
             if key not in ("image_size", "num_identities")}  # the trainer sets these
    args = ReIDTrainingArguments(
        model="la_transformer", output_dir=str(run_dir), epochs=1, image_size=(32, 16),
        model_overrides=json.dumps(trunk), identities_per_batch=4, instances_per_identity=2,
        progress=False, batch_size_eval=16,
    )
    ReIDTrainer(args, data=load_reid_dataset("market1501", root, progress=False)).train()
    for kind in ("best", "last"):
        folder = run_dir / kind
        assert hub.CardInputs.load(folder).model_name == "la-shop"
        (folder / hub.CARD_INPUTS_NAME).unlink()
        (folder / "README.md").unlink()
        code, out, _ = run(capsys, "card", "--model", folder)
        assert code == 0 and f"Wrote {folder / 'README.md'} ('la-shop')" in out


# ---------------------------------------------------------------------- what the data is
def test_every_dataset_layout_has_a_card_description():
    """The trainer records its --dataset as the layout: each one the loader knows must be one
    a card can describe, or saving a checkpoint would fail."""
    from reid_transformers.data import available_datasets

    assert set(hub.KNOWN_DATASETS) == {*available_datasets(), "synthetic"}


def test_a_layout_name_is_not_a_dataset_name():
    unnamed = card_text(data_layout="market1501", metrics=METRICS)
    assert "Trained and evaluated on a custom dataset read in the Market-1501 folder layout" \
        in unnamed
    assert "**Market-1501**" not in unnamed and "A public benchmark filmed" not in unnamed
    assert card_line(unnamed, "Training data") == \
        "a custom dataset in the Market-1501 folder layout (not named; no benchmark is claimed)"
    dataset = metadata(unnamed)["model-index"][0]["results"][0]["dataset"]
    assert dataset == {"name": "custom dataset (Market-1501 folder layout)",
                       "type": "custom-market1501-layout", "split": "query/gallery"}
    assert "datasets" not in metadata(unnamed)

    named = card_text(dataset_name="market1501", data_layout="market1501", metrics=METRICS)
    assert "Trained and evaluated on **Market-1501**." in named
    assert "A public benchmark filmed" in named
    by_id = card_text(dataset_id="acme/shop-reid", data_layout="market1501")
    assert "Trained and evaluated on **acme/shop-reid** ([`acme/shop-reid`]" in by_id
    assert "origin, consent and\nlicense are not recorded" in by_id
    assert metadata(by_id)["datasets"] == ["acme/shop-reid"]
    synthetic = card_text(data_layout="synthetic")
    assert "Do not deploy this checkpoint" in synthetic  # the generated set names itself
    assert "The training data was not recorded" in card_text()


def test_metrics_of_a_custom_folder_do_not_name_the_benchmark(capsys, tmp_path):
    # `evaluate --dataset market1501 --data-dir <custom folder>` records the layout only.
    folder = make_checkpoint(tmp_path / "checkpoint")
    report = CheckpointEvaluation(metrics=METRICS, dataset="market1501").save(tmp_path / "e.json")
    code, out, err = run(capsys, "card", "--model", folder, "--metrics", report)
    assert code == 0, err
    assert "Metrics on market1501-layout data, not named (the card names no benchmark; pass " \
        "--dataset to name it) are in the card." in out
    assert "**Market-1501**" not in (folder / "README.md").read_text()
    # Naming the data names it, and keeps the metrics measured on it.
    code, out, err = run(capsys, "card", "--model", folder, "--dataset", "market1501")
    text = (folder / "README.md").read_text()
    assert code == 0 and "Metrics on market1501 are in the card." in out
    assert "Trained and evaluated on **Market-1501**" in text and index_values(text)["mAP"] == 51.23
    # Another name is other data: the metrics measured on Market-1501 do not carry over.
    code, out, err = run(capsys, "card", "--model", folder, "--dataset", "Shop cameras",
                         "--dataset-id", "acme/shop-reid")
    text = (folder / "README.md").read_text()
    assert code == 0 and "No metrics in the card" in out and "Data: Shop cameras." in out
    assert "model-index" not in metadata(text) and metadata(text)["datasets"] == ["acme/shop-reid"]


def test_images_an_evaluation_left_out_are_in_the_card(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint")
    evaluation = CheckpointEvaluation(metrics=METRICS, dataset="market1501",
                                      skipped_images={"query": ["a.jpg"], "gallery": ["b.png",
                                                                                      "c.png"]})
    text = write_model_card(folder, evaluation=evaluation, dataset="market1501").path.read_text()
    assert "| Images left out (could not be read; the metrics are of the others) | query: 1, " \
        "gallery: 2 |" in text


def test_metrics_measured_in_another_layout_drop_the_saved_name(tmp_path):
    folder = trained_checkpoint(tmp_path / "run" / "best", dataset_name="market1501")
    update = write_model_card(folder, evaluation=CheckpointEvaluation(metrics=METRICS,
                                                                      dataset="dukemtmc"))
    assert update.dataset is None and update.data_layout == "dukemtmc"
    assert "**Market-1501**" not in update.path.read_text()
    update = write_model_card(folder, evaluation=CheckpointEvaluation(metrics=METRICS,
                                                                      dataset="dukemtmc"),
                              dataset="DukeMTMC")
    assert "Trained and evaluated on **DukeMTMC-reID**" in update.path.read_text()


# ---------------------------------------------------------------------- what the checkpoint is
def test_cards_say_which_weights_these_are_and_where_they_started():
    best = card_line(card_text(checkpoint=BEST), "Checkpoint")
    assert best.startswith("`best`, the weights after epoch 7 of 12, the epoch with the highest "
                           "mAP on the query/gallery split. **That split is the benchmark's "
                           "test split**")
    text = card_text(checkpoint=BEST, data_layout="market1501", metrics=METRICS)
    assert "These numbers come from the split that chose this checkpoint" in text
    validation = card_line(card_text(checkpoint={**BEST, "selected_on": "validation"}),
                           "Checkpoint")
    assert "validation split" in validation and "test split" not in validation
    start = card_line(card_text(checkpoint={**BEST, "epoch": 0}), "Checkpoint")
    assert "the starting weights (epoch 0 of 12): no epoch of training beat them" in start
    last = card_line(card_text(checkpoint={"kind": "last", "epoch": 12, "num_epochs": 12}),
                     "Checkpoint")
    assert last == "`last`, the weights when the run ended, after epoch 12 of 12"
    assert "**Checkpoint:**" not in card_text()

    finetuned = card_text(base_model="org/la-market", initialisation="checkpoint")
    assert card_line(finetuned, "Fine-tuned from") == (
        "the re-ID checkpoint [`org/la-market`](https://huggingface.co/org/la-market) "
        "(training continued from its weights)")
    assert metadata(finetuned)["base_model"] == "org/la-market"
    assert card_line(card_text(initialisation="random"), "Initialised from") == \
        "random values: no pretrained weights were loaded"
    backbone = card_line(card_text(base_model="/weights/vit.pth", initialisation="backbone"),
                         "Initialised from")
    assert backbone.startswith("the pretrained weights `/weights/vit.pth` for the trunk")
    assert card_line(card_text(), "Initialised from") == "not recorded in this card"


def test_reranked_only_metrics_make_a_card():  # the trainer with --eval_rerank
    text = card_text(dataset_name="market1501", reranked_metrics=METRICS)
    assert "| with k-reciprocal re-ranking | 51.23 |" in text
    assert "without re-ranking" not in text
    assert set(index_values(text)) == {"mAP (re-ranked)", "Rank-1 (re-ranked)",
                                       "Rank-5 (re-ranked)", "Rank-10 (re-ranked)",
                                       "mINP (re-ranked)"}


# Every architecture, with settings whose numbers differ from the paper's.
ARCHITECTURE_CONFIGS = {
    "la_transformer": ("la_transformer", LA_TINY),
    "la_transformer_cls": ("la_transformer", {**LA_TINY, "classification": "cls"}),
    "aaformer": ("aaformer", {**AAFORMER_TINY, "part_granularities": [1, 3]}),
    "pan": ("pan", {**PAN_TINY, **SMALL_TRUNK, "part_scales": [1, 3]}),
    "pan_add": ("pan", {**PAN_TINY, "fusion": "add", "embedding_size": 24}),
    "hat": ("hat", {**HAT_TINY, **SMALL_TRUNK}),
    "hat_res5": ("hat", {**HAT_TINY, "tfc_depths": [1, 1, 1, 1],
                         "tfc_hidden_sizes": [16, 24, 32, 40]}),
    "prct": ("prct", {**PRCT_TINY, **SMALL_TRUNK}),
    "prct_fc": ("prct", {**PRCT_TINY, "embedding_projection_size": 48}),
}


@pytest.mark.parametrize("name", ARCHITECTURE_CONFIGS)
def test_every_number_the_card_states_is_the_checkpoints(name):
    model_type, settings = ARCHITECTURE_CONFIGS[name]
    config = AutoConfig.for_model(model_type, **settings)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():
        embeddings = model(torch.randn(1, 3, *config.image_size)).embeddings
    text = str(render_model_card(config, model_name="m"))
    output = card_line(text, "Output")
    assert f"`(batch, {embeddings.shape[-1]})`" in output, output
    how_it_works = text.split("## How it works")[1].split("## How to use")[0]
    described = card_line(text, "Architecture") + output + how_it_works
    if "depths" in settings:  # the small trunk
        assert "ResNet-18" not in described and "ResNet-50" not in described
        assert "ResNet (the paper uses ResNet-50)" not in text
        assert "10-layer ResNet (basic blocks 1, 1, 1, 1; stage widths 16, 32, 64, 128)" in text
        assert "2048" not in described
    if model_type in ("la_transformer", "aaformer"):  # a 32-wide ViT is no ViT-B/16
        assert "ViT (3 layers of width 32, 4 heads, feed-forward 64, 8 x 8 patches) image " \
            "transformer (the paper uses ViT-B/16)" in " ".join(text.split())
        assert "ViT-B/16" not in described


# ---------------------------------------------------------------------- the documentation
def test_the_documented_examples_run(tmp_path, monkeypatch):
    """The first two examples of docs/hub.md: a card rendered, saved and pushed, then card
    inputs saved beside a checkpoint."""
    example, inputs_example = re.findall(r"```python\n(.*?)```", DOCS.read_text(),
                                         re.DOTALL)[:2]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(4), 2)
    split_inputs = {
        "query_embeddings": rng.normal(size=(8, 16)), "query_pids": pids,
        "query_camids": np.zeros(8, dtype=int),
        "gallery_embeddings": rng.normal(size=(8, 16)), "gallery_pids": pids,
        "gallery_camids": np.ones(8, dtype=int),
    }
    metric = ReIDMetric()  # what a reader who evaluated with the metric holds
    metric.add_batch(**split_inputs)
    namespace = {
        "model": LATransformerModel(LATransformerConfig(**LA_TINY)),
        "processor": LATransformerImageProcessor(size={"height": 32, "width": 16}),
        "split_inputs": split_inputs,
        "metric": metric,
    }
    monkeypatch.chdir(tmp_path)
    with FakeHub() as server:
        use_fake_hub(monkeypatch, server.endpoint, tmp_path / "hf_home")
        exec(compile(example, str(DOCS), "exec"), namespace)
        remote = server.files("my-org/la-transformer-market1501")
        endpoint = server.endpoint
    text = remote["README.md"].decode()
    assert (tmp_path / "outputs" / "la-market" / "README.md").read_text() == text
    values = index_values(text)
    assert "mAP" in values and "mAP (re-ranked)" in values
    assert namespace["url"].startswith(endpoint)

    namespace.update(recipe=RECIPE, folder=make_checkpoint(tmp_path / "la-shop" / "best"))
    exec(compile(inputs_example, str(DOCS), "exec"), namespace)
    assert "custom dataset in the Market-1501 folder layout" in \
        (tmp_path / "la-shop" / "best" / "README.md").read_text()
