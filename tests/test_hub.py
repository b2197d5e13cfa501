"""Model cards and Hub pushes, offline: cards render from the packaged templates, pushes go to a
local fake Hub (tests/fake_hub.py) and come back through AutoModel / AutoImageProcessor."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import httpx as hub_httpx
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, PreTrainedConfig, pipeline

from reid_transformers import LATransformerConfig, LATransformerImageProcessor, LATransformerModel
from reid_transformers.evaluation import evaluate_ranking
from reid_transformers.hub import (
    KNOWN_DATASETS,
    HubPushError,
    available_model_card_templates,
    model_card_template,
    push_to_hub,
    render_model_card,
    save_model_card,
)

from .fake_hub import FakeHub, use_fake_hub
from .test_la_transformer import TINY

TOKEN = "hf_fake_write_token"
REPO = "org/tiny-la"
ARCHITECTURES = ("aaformer", "hat", "la_transformer", "pan", "prct")
METRICS = {"mAP": 0.5123, "rank-1": 0.7, "rank-5": 0.85, "rank-10": 0.9, "mINP": 0.21,
           "num_valid_queries": 40, "num_skipped_queries": 2, "cmc": [0.7, 0.75]}
RERANKED = {"mAP": 0.6, "rank-1": 0.74, "rank-5": 0.86, "rank-10": 0.91, "mINP": 0.3}
RECIPE = {"epochs": 30, "optimizer": "adam", "learning_rate": 3.5e-4,
          "batch": "8 identities x 4 images", "input_size": [256, 128],
          "augmentation": {"flip": 0.5, "crop_padding": 10},
          "blockwise_unfreezing": {"unfreeze_every": 2, "lr_decay": 0.8},
          "note": "a|b"}


def tiny_config() -> LATransformerConfig:
    return LATransformerConfig(**TINY)


def stub_config(model_type: str) -> PreTrainedConfig:
    """A config of an architecture that may not be implemented yet (only its model_type)."""
    return type(f"{model_type}Config", (PreTrainedConfig,), {"model_type": model_type})()


def full_card(**overrides) -> ModelCard:
    kwargs = dict(model_name="tiny-la-market", repo_id=REPO, dataset_name="market1501",
                  metrics=METRICS, reranked_metrics=RERANKED, training=RECIPE,
                  evaluation={"distance": "cosine", "flip": False},
                  base_model="google/vit-base-patch16-224")
    return render_model_card(tiny_config(), **{**kwargs, **overrides})


def metadata(card: ModelCard) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", str(card), re.DOTALL)
    assert match is not None, "the card must start with a YAML block"
    return yaml.safe_load(match.group(1))


def make_checkpoint(folder: Path) -> tuple[LATransformerModel, LATransformerImageProcessor]:
    torch.manual_seed(0)
    model = LATransformerModel(tiny_config()).eval()
    processor = LATransformerImageProcessor(size={"height": 32, "width": 16})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_model_card(full_card(), folder)
    return model, processor


def fake_checkpoint(folder: Path) -> Path:
    """The files push_to_hub requires, without a model (weights are not parsed by a push)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "la_transformer"}))
    (folder / "preprocessor_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not parsed by a push")
    save_model_card(full_card(), folder)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (hidden ones too): content hash and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(),
                                        path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def crops(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8))
            for _ in range(count)]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN) as server:
        use_fake_hub(monkeypatch, server.endpoint, tmp_path / "hf_home")
        yield server


# ---------------------------------------------------------------------- templates
def test_templates_have_one_source_the_top_level_folder():
    project = Path(__file__).resolve().parents[1]
    folder = project / "model_cards"
    names = sorted(path.name for path in folder.glob("*.md.jinja"))
    assert names == ["_base.md.jinja", *(f"{name}.md.jinja" for name in ARCHITECTURES)]
    assert not (project / "src" / "reid_transformers" / "model_cards").exists()  # no copy
    installed = importlib.resources.files("reid_transformers.model_cards")
    assert available_model_card_templates() == list(ARCHITECTURES)
    for name in ARCHITECTURES:
        source = (folder / f"{name}.md.jinja").read_text(encoding="utf-8")
        assert (installed / f"{name}.md.jinja").read_text(encoding="utf-8") == source
        assert model_card_template(name) == source
        assert source.startswith("{% extends base %}")


def test_unknown_model_type_is_a_clear_error():
    with pytest.raises(ValueError, match="no model card template for model_type 'resnet_reid'"):
        model_card_template("resnet_reid")
    with pytest.raises(ValueError, match="'resnet_reid'.*templates exist for"):
        render_model_card(stub_config("resnet_reid"), model_name="x")


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_template_renders(model_type):
    card = render_model_card(stub_config(model_type), model_name=f"{model_type}-test",
                             repo_id="org/test", dataset_name="msmt17", metrics=RERANKED)
    text = str(card)
    assert "{%" not in text and "{#" not in text  # no Jinja left unrendered
    assert metadata(card)["model-index"][0]["name"] == f"{model_type}-test"
    assert f"`model_type`: `{model_type}`" in text
    # Every block the base layout expects is filled.
    assert re.search(r"\*\*Paper:\*\* \S", text)
    assert re.search(r"\*\*Output:\*\* `embeddings`", text)
    for heading in ("## How it works", "### Reported in the paper", "## Citation"):
        assert re.search(rf"{heading}\n\n\S", text), heading
    assert "```bibtex\n@" in text and "The paper's recipe, for comparison: " in text
    assert "## Out-of-scope uses" in text and "without a lawful basis" in text
    assert 'AutoModel.from_pretrained("org/test")' in text


# ---------------------------------------------------------------------- card contents
def test_card_metadata_carries_the_model_index():
    card = full_card()
    meta = metadata(card)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["library_name"] == "transformers"
    assert {"reid-transformers", "person-re-identification", "la_transformer"} <= set(meta["tags"])
    assert meta["base_model"] == "google/vit-base-patch16-224"
    (entry,) = meta["model-index"]
    assert entry["name"] == "tiny-la-market"
    (result,) = entry["results"]  # one task and dataset: one result, all metrics in it
    assert result["task"] == {"type": "image-feature-extraction",
                              "name": "Person Re-Identification"}
    assert result["dataset"]["name"] == "Market-1501"
    assert result["dataset"]["type"] == "market1501"
    values = {(m["type"], m["name"]): m["value"] for m in result["metrics"]}
    assert values == {
        ("mAP", "mAP"): 51.23, ("rank-1", "Rank-1"): 70.0, ("rank-5", "Rank-5"): 85.0,
        ("rank-10", "Rank-10"): 90.0, ("mINP", "mINP"): 21.0,
        ("mAP", "mAP (re-ranked)"): 60.0, ("rank-1", "Rank-1 (re-ranked)"): 74.0,
        ("rank-5", "Rank-5 (re-ranked)"): 86.0, ("rank-10", "Rank-10 (re-ranked)"): 91.0,
        ("mINP", "mINP (re-ranked)"): 30.0,
    }
    reranked = [m for m in result["metrics"] if m["name"].endswith("(re-ranked)")]
    assert all(m["args"] == {"re_ranking": "k-reciprocal"} for m in reranked)
    # huggingface_hub parses it back into the same results.
    reloaded = ModelCard(str(card))
    assert reloaded.data.model_name == "tiny-la-market"
    assert len(reloaded.data.eval_results) == 10


def test_card_text_has_paper_citation_ethics_recipe_and_metrics():
    text = str(full_card())
    assert "[*Person Re-Identification with a Locally Aware Transformer*]" in text
    assert "@article{sharma2021person," in text and "Sharma, Charu and Kapil" in text
    for phrase in ("## Intended uses", "## Out-of-scope uses", "## Risks, bias and legal",
                   "must not be\n  used to identify", "lawful basis", "consent",
                   "Demographic bias", "GDPR", "Misuse"):
        assert phrase in text, phrase
    assert "| Learning rate | 3.5e-4 |" in text
    assert "| Input size (height x width) | 256 x 128 |" in text
    assert "| Augmentation | flip: 0.5, crop_padding: 10 |" in text
    assert "| Note | a\\|b |" in text  # a '|' in a value must not split the table row
    assert "| Distance | cosine |" in text
    assert "| | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |" in text
    assert "| without re-ranking | 51.23 | 70.00 | 85.00 | 90.00 | 21.00 |" in text
    assert "| with k-reciprocal re-ranking | 60.00 | 74.00 | 86.00 | 91.00 | 30.00 |" in text
    assert "40 queries evaluated, 2 skipped" in text
    assert 'pipeline("image-feature-extraction", model="org/tiny-la")' in text
    assert "resized by the image processor to 32 x 16" in text
    assert "| `gelt_lambda` | 0.125 |" in text and "transformers_version" not in text


def test_card_without_metrics_or_recipe_says_so():
    card = render_model_card(tiny_config(), model_name="untrained")
    text = str(card)
    assert "model-index" not in metadata(card) and "model_name" not in metadata(card)
    assert "This checkpoint has not been evaluated" in text
    assert "The training recipe was not recorded" in text
    assert 'from_pretrained("path/to/checkpoint")' in text


def test_datasets_and_base_models(tmp_path):
    synthetic = str(render_model_card(tiny_config(), model_name="m", dataset_name="synthetic"))
    assert KNOWN_DATASETS["synthetic"] in synthetic and "Do not deploy" in synthetic
    duke = str(render_model_card(tiny_config(), model_name="m", dataset_name="DukeMTMC"))
    assert "DukeMTMC-reID" in duke and "withdrawn" in duke

    card = render_model_card(tiny_config(), model_name="m", dataset_name="Shop Cameras 2024",
                             dataset_id="acme/shop-reid", metrics=RERANKED)
    meta = metadata(card)
    assert meta["datasets"] == ["acme/shop-reid"]
    assert meta["model-index"][0]["results"][0]["dataset"] == {
        "name": "Shop Cameras 2024", "type": "acme/shop-reid", "split": "query/gallery"}

    local_weights = tmp_path / "jx_vit_base_p16_224.pth"
    local_weights.write_bytes(b"")
    card = render_model_card(tiny_config(), model_name="m", base_model=str(local_weights))
    assert "base_model" not in metadata(card)  # the Hub only accepts Hub ids there
    assert f"**Initialised from:** `{local_weights}`" in str(card)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model_name": " "}, "model_name must be a non-empty string"),
    ({"repo_id": "tiny-la"}, r"repo_id must look like 'namespace/name'.*'tiny-la'"),
    ({"repo_id": "org/a/b"}, "repo_id must look like"),
    ({"dataset_name": None}, "metrics need the dataset they were measured on: dataset_name, "
                             "dataset_id or data_layout"),
    ({"dataset_name": "  "}, "dataset_name must be a non-empty string"),
    ({"metrics": {**METRICS, "mAP": 51.2}}, r"metrics\['mAP'\] must be a fraction in \[0, 1\]"),
    ({"metrics": {**METRICS, "mAP": float("nan")}}, "must be a fraction"),
    ({"metrics": {**METRICS, "mAP": True}}, "must be a fraction"),
    ({"metrics": {**METRICS, "map": 0.5}}, "unknown key 'map'"),
    ({"metrics": {"mAP": 0.5}}, r"metrics lacks \['rank-1'\]"),
    ({"metrics": {**METRICS, "num_skipped_queries": -1}}, "must be a count >= 0"),
    ({"reranked_metrics": [0.5]}, "reranked_metrics must be a mapping"),
    ({"training": {1: "x"}}, "training keys must be non-empty strings"),
    ({"evaluation": "cosine"}, "evaluation must be a mapping"),
])
def test_bad_card_arguments_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        full_card(**overrides)


def test_metrics_straight_from_the_evaluate_metric():
    rng = np.random.default_rng(0)
    pids, camids = np.repeat(np.arange(6), 2), np.tile([0, 1], 6)
    gallery, queries = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    result = evaluate_ranking(queries, gallery, pids, pids, camids, camids).as_dict()
    card = full_card(metrics={**result, "num_valid_queries": np.int64(12),
                              "mAP": np.float32(result["mAP"])}, reranked_metrics=None)
    values = {m["type"]: m["value"] for m in metadata(card)["model-index"][0]["results"][0]
              ["metrics"]}
    assert values["rank-1"] == round(100 * result["rank-1"], 2)
    assert values["mAP"] == round(100 * float(np.float32(result["mAP"])), 2)
    assert "12 queries evaluated, 0 skipped" in str(card)


def test_extra_rank_columns_keep_headline_order():
    card = full_card(metrics={"rank-20": 0.95, "mINP": 0.2, "rank-1": 0.7, "mAP": 0.5},
                     reranked_metrics=None)
    assert "| | mAP | Rank-1 | Rank-20 | mINP |" in str(card)


# ---------------------------------------------------------------------- saving the card
def test_save_model_card_writes_readme(tmp_path):
    card = full_card()
    (tmp_path / "README.md").write_text("old card")
    path = save_model_card(card, tmp_path)
    assert path == tmp_path / "README.md"
    assert path.read_text(encoding="utf-8") == str(card)
    assert ModelCard.load(path).data.to_dict() == card.data.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary left
    (tmp_path / "other.md").write_text("")  # what the umask gives any new file
    assert path.stat().st_mode == (tmp_path / "other.md").stat().st_mode


def test_save_model_card_never_leaves_a_partial_file(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("old card")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_model_card(full_card(), tmp_path)
    assert (tmp_path / "README.md").read_text() == "old card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_save_model_card_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model_card(full_card(), tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        save_model_card(full_card(), tmp_path / "file")


# ---------------------------------------------------------------------- pushing
def test_push_then_load_from_the_hub_gives_the_same_embeddings(hub, tmp_path):
    folder = tmp_path / "checkpoint"
    model, processor = make_checkpoint(folder)
    before = snapshot(folder)

    url = push_to_hub(folder, REPO, token=TOKEN, commit_message="First LA checkpoint")

    head = hub.repos[REPO].head
    assert url == f"{hub.endpoint}/{REPO}/commit/{head.oid}"
    assert head.message == "First LA checkpoint"
    remote = hub.files(REPO)
    assert remote["README.md"] == (folder / "README.md").read_bytes()
    assert {name: remote[name] for name in before} == {
        name: (folder / name).read_bytes() for name in before}
    assert snapshot(folder) == before  # a push only reads

    loaded = AutoModel.from_pretrained(REPO).eval()
    loaded_processor = AutoImageProcessor.from_pretrained(REPO)
    assert isinstance(loaded, LATransformerModel)
    assert isinstance(loaded_processor, LATransformerImageProcessor)
    images = crops()
    with torch.no_grad():
        expected = model(**processor(images, return_tensors="pt")).embeddings
        got = loaded(**loaded_processor(images, return_tensors="pt")).embeddings
    assert torch.equal(got, expected)

    # The card's pipeline snippet works against the pushed repository.
    extractor = pipeline("image-feature-extraction", model=REPO)
    pooled = torch.tensor(extractor(images[0], pool=True))
    torch.testing.assert_close(pooled, expected[:1])
    assert hub.unhandled == []


def test_push_skips_pickles_and_hidden_files_and_repeats_cheaply(hub, tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint")
    (folder / "optimizer.pt").write_bytes(b"pickle")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "state").write_text("local only")
    (folder / "training_log.json").write_text("{}")

    first = push_to_hub(folder, REPO, token=TOKEN, private=True)
    assert hub.repos[REPO].private
    assert sorted(hub.files(REPO)) == [".gitattributes", "README.md", "config.json",
                                       "model.safetensors", "preprocessor_config.json",
                                       "training_log.json"]
    assert hub.repos[REPO].head.message == "Upload la_transformer checkpoint"

    commits = len(hub.repos[REPO].commits)
    again = push_to_hub(folder, REPO, token=TOKEN)  # nothing changed: no new commit
    assert again == first and len(hub.repos[REPO].commits) == commits

    (folder / "README.md").write_text(str(full_card(model_name="renamed")), encoding="utf-8")
    third = push_to_hub(folder, REPO, token=TOKEN, create_repo=False)
    assert third != first
    assert hub.files(REPO)["README.md"] == (folder / "README.md").read_bytes()


def test_push_uploads_sharded_weights(hub, tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint")
    (folder / "model.safetensors").unlink()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in shards:
        (folder / shard).write_bytes(b"shard")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}))
    push_to_hub(folder, REPO, token=TOKEN)
    assert set(shards) <= set(hub.files(REPO))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "preprocessor_config.json",
                                  "README.md"])
def test_push_names_each_missing_file(hub, tmp_path, name):
    folder = fake_checkpoint(tmp_path / "checkpoint")
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"lacks {re.escape(name)}"):
        push_to_hub(folder, REPO, token=TOKEN)
    assert hub.requests == []  # checked before any request


def test_push_checks_the_folder_before_any_request(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "missing", REPO, token=TOKEN)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        push_to_hub(tmp_path / "file", REPO, token=TOKEN)

    folder = fake_checkpoint(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match="must look like 'namespace/name'"):
        push_to_hub(folder, "tiny-la", token=TOKEN)

    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="lacks model-00001-of-00002.safetensors"):
        push_to_hub(folder, REPO, token=TOKEN)
    (folder / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ValueError, match="not a safetensors index"):
        push_to_hub(folder, REPO, token=TOKEN)

    folder = fake_checkpoint(tmp_path / "other")
    (folder / "README.md").write_text("---\n- not: a mapping\n---\n# card\n")
    with pytest.raises(ValueError, match="invalid YAML metadata"):
        push_to_hub(folder, REPO, token=TOKEN)
    assert hub.requests == []


def test_push_without_write_access_says_how_to_log_in(hub, tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint")
    before = snapshot(folder)
    with pytest.raises(HubPushError, match=r"HTTP 401.*Nothing local was changed.*hf auth login"):
        push_to_hub(folder, REPO, token="hf_wrong")
    with pytest.raises(HubPushError, match=r"HTTP 404.*create_repo=True"):
        push_to_hub(folder, REPO, token=TOKEN, create_repo=False)  # the repo does not exist
    assert REPO not in hub.repos
    assert snapshot(folder) == before


def test_push_in_offline_mode_fails_at_once_and_changes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = fake_checkpoint(tmp_path / "checkpoint")
    before = snapshot(folder)
    with pytest.raises(HubPushError) as caught:
        push_to_hub(folder, REPO, token=TOKEN)
    message = str(caught.value)
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
    assert f"Nothing local was changed: {folder} is as it was" in message
    assert "unset HF_HUB_OFFLINE" in message and "run the same command again" in message
    assert isinstance(caught.value.__cause__, OfflineModeIsEnabled)
    assert snapshot(folder) == before


def test_push_to_an_unreachable_hub_says_what_failed(monkeypatch, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    use_fake_hub(monkeypatch, endpoint, tmp_path / "hf_home")
    folder = fake_checkpoint(tmp_path / "checkpoint")
    before = snapshot(folder)
    with pytest.raises(HubPushError) as caught:
        push_to_hub(folder, REPO, token=TOKEN)
    message = str(caught.value)
    assert f"could not reach {endpoint} (ConnectError" in message
    assert "Nothing local was changed" in message and "HF_ENDPOINT" in message
    assert isinstance(caught.value.__cause__, hub_httpx.ConnectError)
    assert snapshot(folder) == before
