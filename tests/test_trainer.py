"""The trainer end to end on a small synthetic dataset with a tiny LA-Transformer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from reid_transformers.data import load_reid_dataset
from reid_transformers.training import ReIDTrainer, ReIDTrainingArguments

TINY_MODEL = {
    "patch_size": 8, "patch_stride": 8, "hidden_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 4, "intermediate_size": 64, "classifier_hidden_size": 16,
}


def arguments(output_dir, **overrides):
    values = dict(
        model="la_transformer", output_dir=str(output_dir), epochs=2, image_size=(32, 16),
        model_overrides=json.dumps(TINY_MODEL), identities_per_batch=4,
        instances_per_identity=2, learning_rate=1e-3, crop_padding=2, progress=False,
        batch_size_eval=16,
    )
    values.update(overrides)
    return ReIDTrainingArguments(**values)


def crash_in_second_epoch(trainer: ReIDTrainer, monkeypatch) -> None:
    """Train ``trainer`` and crash it at the start of its second epoch (state/ holds
    epoch 1)."""
    real_epoch = trainer._train_epoch

    def crashing(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        real_epoch(epoch)

    monkeypatch.setattr(trainer, "_train_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def test_training_writes_checkpoints_cards_and_logs(tmp_path, data, capfd):
    trainer = ReIDTrainer(arguments(tmp_path), data=data)
    metrics = trainer.train()
    assert "Writing model shards" not in capfd.readouterr().err  # no transformers bars
    assert {"mAP", "rank-1", "rank-5", "mINP"} <= set(metrics)
    for name in ("best", "last"):
        folder = tmp_path / name
        for file in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md"):
            assert (folder / file).is_file(), f"{name}/{file}"
        assert "mAP" in (folder / "README.md").read_text()
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in log) and any("mAP" in r for r in log)
    # Cosine over 2 epochs, one rate per epoch: 1e-3, then half of it.
    rates = [r["learning_rate"] for r in log if "train_loss" in r]
    assert rates == pytest.approx([1e-3, 5e-4])
    model = AutoModel.from_pretrained(tmp_path / "last")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "last")
    assert model.config.num_identities == data["train"].features["pid"].num_classes
    assert processor.size["height"] == 32



def test_checkpoint_cards_say_what_the_checkpoint_is_and_keep_their_inputs(tmp_path, data):
    from reid_transformers.hub import CardInputs, write_model_card

    ReIDTrainer(arguments(tmp_path, epochs=2), data=data).train()
    best = CardInputs.load(tmp_path / "best")
    assert best.checkpoint.kind == "best" and best.checkpoint.selected_on == "test"
    assert best.training["optimizer"] == "adam" and best.initialisation == "random"
    assert best.dataset_name is None and best.data_layout == "synthetic"
    card = (tmp_path / "best" / "README.md").read_text()
    assert "test split" in card and "Learning rate" in card
    # A later re-render (as `card --metrics` does) keeps the trainer's recipe table.
    write_model_card(tmp_path / "best", model_name="renamed")
    assert "Learning rate" in (tmp_path / "best" / "README.md").read_text()


def test_blockwise_unfreezing_keeps_frozen_blocks_bit_identical(tmp_path, data):
    args = arguments(tmp_path, epochs=1, eval_every=0, blockwise_unfreezing=True,
                     unfreeze_every=2, initially_unfrozen=1)
    trainer = ReIDTrainer(args, data=data)
    blocks = trainer.unwrapped_model.unfreezable_blocks()
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    trainer.train()
    after = [b.state_dict() for b in trainer.unwrapped_model.unfreezable_blocks()]
    assert any(not torch.equal(after[0][k], before[0][k]) for k in before[0])  # top trains
    for frozen_before, frozen_after in zip(before[1:], after[1:], strict=True):
        for key, value in frozen_before.items():
            assert torch.equal(frozen_after[key], value), key


def test_resumed_run_reaches_the_same_weights(tmp_path, data, monkeypatch):
    straight = ReIDTrainer(arguments(tmp_path / "straight", eval_every=0), data=data)
    straight.train()

    crash_in_second_epoch(
        ReIDTrainer(arguments(tmp_path / "resumed", eval_every=0), data=data), monkeypatch
    )
    assert not (tmp_path / "resumed" / "last").exists()
    second = ReIDTrainer(arguments(tmp_path / "resumed", eval_every=0, resume=True), data=data)
    second.train()
    expected = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; mixed precision can only be set on a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_autocast_accumulation_and_clipping_train(tmp_path, data, fresh_accelerate_state):
    args = arguments(tmp_path, epochs=1, mixed_precision="bf16", max_grad_norm=1.0,
                     gradient_accumulation_steps=2, optimizer="sgd", scheduler="multistep",
                     milestones=[1], schedule_unit="step")
    trainer = ReIDTrainer(args, data=data)
    metrics = trainer.train()
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert trainer.state.global_step == len(trainer.sampler) // 2
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in log if "train_loss" in r)
    weights = load_file(tmp_path / "last" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_batch_larger_than_the_dataset_is_a_clear_error(tmp_path, data):
    with pytest.raises(ValueError, match="num_identities=64 per batch but the dataset has only"):
        ReIDTrainer(arguments(tmp_path, identities_per_batch=64), data=data)


def test_random_sampler_trains_la_transformer_on_shuffled_batches(tmp_path, data):
    trainer = ReIDTrainer(
        arguments(tmp_path, epochs=1, sampler="random", batch_size=8, eval_every=0), data=data
    )
    assert len(trainer.sampler) == len(data["train"]) // 8 + (len(data["train"]) % 8 > 1)
    trainer.train()
    card = (tmp_path / "last" / "README.md").read_text()
    assert "8 images, shuffled" in card


def test_random_sampler_is_refused_for_models_with_a_triplet_loss(tmp_path, data):
    tiny_vit = {k: v for k, v in TINY_MODEL.items() if k != "classifier_hidden_size"}
    args = arguments(tmp_path, model="aaformer", model_overrides=json.dumps(tiny_vit),
                     sampler="random")
    with pytest.raises(ValueError, match="--sampler random cannot train AAformerModel"):
        ReIDTrainer(args, data=data)


def test_max_steps_ends_the_run_at_the_step_budget(tmp_path, data):
    trainer = ReIDTrainer(
        arguments(tmp_path, epochs=1, max_steps=5, scheduler="multistep", schedule_unit="step",
                  milestones=[3], identities_per_batch=8),
        data=data,
    )
    per_epoch = len(trainer.sampler)
    assert per_epoch < 5 and trainer.num_epochs == -(-5 // per_epoch)  # > --epochs
    metrics = trainer.train()
    assert trainer.state.global_step == 5 and "mAP" in metrics
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train_loss" in r][-1] == 5
    assert log[-1]["step"] == 5 and "mAP" in log[-1]
    # The step schedule spans the budget: x0.1 from step 3 on.
    assert log[-2]["learning_rate"] == pytest.approx(1e-4)
    assert "Optimizer steps (budget)" in (tmp_path / "last" / "README.md").read_text()


def test_resume_without_state_is_a_clear_error(tmp_path, data):
    trainer = ReIDTrainer(arguments(tmp_path, resume=True), data=data)
    with pytest.raises(FileNotFoundError, match="holds no saved state"):
        trainer.train()


def test_training_pushes_the_best_checkpoint_to_the_hub(tmp_path, data, monkeypatch):
    from .fake_hub import FakeHub, use_fake_hub

    with FakeHub(token="hf_test") as server:
        use_fake_hub(monkeypatch, server.endpoint, tmp_path / "hf_home")
        args = arguments(tmp_path / "run", epochs=1, push_to_hub=True,
                         hub_model_id="org/tiny-la-synthetic", hub_token="hf_test")
        ReIDTrainer(args, data=data).train()
        remote = server.files("org/tiny-la-synthetic")
        local = tmp_path / "run" / "best"
        assert remote["model.safetensors"] == (local / "model.safetensors").read_bytes()
        assert 'from_pretrained("org/tiny-la-synthetic")' in remote["README.md"].decode()
    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        arguments(tmp_path, push_to_hub=True)


def _distributed_worker(root: str, output_dir: str) -> None:
    import os

    from accelerate.state import AcceleratorState

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # forked workers deadlock in OpenMP otherwise
    # The fork inherits the parent's single-process state from earlier tests: start afresh.
    AcceleratorState._reset_state(True)
    data = load_reid_dataset("market1501", root, progress=False)
    trainer = ReIDTrainer(arguments(output_dir, eval_every=0), data=data)
    rank = trainer.accelerator.process_index
    batches = [list(b) for b in trainer.sampler]
    metrics = trainer.train()
    record = {"rank": rank, "world": trainer.accelerator.num_processes, "batches": batches,
              "metrics": metrics}
    with open(f"{output_dir}/rank{rank}.json", "w") as handle:
        json.dump(record, handle)


def test_two_processes_share_batches_write_once_and_gather_every_sample(tmp_path, data):
    from accelerate import debug_launcher

    from reid_transformers.evaluation import evaluate_ranking
    from reid_transformers.retrieval import extract_embeddings

    root = str(data["query"][0]["path"]).rsplit("/query/", 1)[0]
    out = tmp_path / "run"
    out.mkdir()
    debug_launcher(_distributed_worker, args=(root, str(out)), num_processes=2)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    seen = [tuple(b) for r in ranks for b in r["batches"]]
    assert len(seen) == len(set(seen)) and len(ranks[0]["batches"]) == len(ranks[1]["batches"])
    assert not set(map(tuple, ranks[0]["batches"])) & set(map(tuple, ranks[1]["batches"]))

    # One checkpoint per kind, one log line per event, no staging leftovers.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["best", "last", "state"]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in log if "mAP" in r]) == 1
    assert ranks[1]["metrics"] == ranks[0]["metrics"]  # computed once, shared

    # The gathered evaluation saw every query and gallery image exactly once.
    metrics = ranks[0]["metrics"]
    assert metrics["num_valid_queries"] + metrics["num_skipped_queries"] == len(data["query"])
    model = AutoModel.from_pretrained(out / "last")
    processor = AutoImageProcessor.from_pretrained(out / "last")
    q = extract_embeddings(model, data["query"], processor, progress=False)
    g = extract_embeddings(model, data["gallery"], processor, progress=False)
    single = evaluate_ranking(q, g, data["query"]["pid"], data["gallery"]["pid"],
                              data["query"]["camid"], data["gallery"]["camid"], metric="cosine")
    assert metrics["mAP"] == pytest.approx(single.mean_ap, abs=1e-5)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("hat", {"bottleneck_depth": 1, "tfc_depths": [1, 0, 1], "tfc_hidden_sizes": [16, 16, 32],
                 "tfc_num_heads": 2, "tfc_head_dim": 8, "tfc_intermediate_size": 32}),
        ("prct", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 32, "linformer_k": 4}),
    ],
)
def test_resnet_transformer_presets_train_and_reload(tmp_path, data, preset, overrides):
    from reid_transformers.training.arguments import apply_preset

    explicit = dict(
        output_dir=str(tmp_path), epochs=1, image_size=(64, 32), identities_per_batch=4,
        instances_per_identity=2, pretrained_backbone=None, progress=False, batch_size_eval=16,
        model_overrides=json.dumps({**overrides, "frozen_batch_norm": True}), warmup=1,
        milestones=[1],
    )
    args = apply_preset(ReIDTrainingArguments(preset=preset, **explicit), set(explicit))
    trainer = ReIDTrainer(args, data=data)
    rates = {g["group_name"]: g["lr"] for g in trainer.optimizer.param_groups}
    transformer_factor = 0.5 if preset == "hat" else 1.0
    assert rates["transformer_decay"] == pytest.approx(
        rates["new_decay"] * transformer_factor
    )
    metrics = trainer.train()
    assert 0.0 <= metrics["mAP"] <= 1.0
    model = AutoModel.from_pretrained(tmp_path / "last")
    assert model.config.model_type == preset
    card = (tmp_path / "last" / "README.md").read_text()
    assert "Augmentation" in card and ("random_patch" in card or "Random patch" in card)
    assert ("| 1 epoch |" if preset == "hat" else "| 1 step |") in card  # warm-up row
