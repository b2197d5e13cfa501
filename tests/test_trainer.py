"""The trainer end to end on a small synthetic dataset with a tiny LA-Transformer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from reid_transformers.data import load_reid_dataset, make_synthetic_reid
from reid_transformers.training import ReIDTrainer, ReIDTrainingArguments

TINY_MODEL = {
    "patch_size": 8, "patch_stride": 8, "hidden_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 4, "intermediate_size": 64, "classifier_hidden_size": 16,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_reid(
        tmp_path_factory.mktemp("synthetic") / "data", num_identities=16, num_cameras=3,
        image_size=(64, 32), num_distractors=3, num_junk=2, progress=False,
    )
    return load_reid_dataset("market1501", root, progress=False)


def arguments(output_dir, **overrides):
    values = dict(
        model="la_transformer", output_dir=str(output_dir), epochs=2, image_size=(32, 16),
        model_overrides=json.dumps(TINY_MODEL), identities_per_batch=4,
        instances_per_identity=2, learning_rate=1e-3, crop_padding=2, progress=False,
        batch_size_eval=16,
    )
    values.update(overrides)
    return ReIDTrainingArguments(**values)


def test_training_writes_checkpoints_cards_and_logs(tmp_path, data):
    trainer = ReIDTrainer(arguments(tmp_path), data=data)
    metrics = trainer.train()
    assert {"mAP", "rank-1", "rank-5", "mINP"} <= set(metrics)
    for name in ("best", "last"):
        folder = tmp_path / name
        for file in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md"):
            assert (folder / file).is_file(), f"{name}/{file}"
        assert "mAP" in (folder / "README.md").read_text()
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in log) and any("mAP" in r for r in log)
    model = AutoModel.from_pretrained(tmp_path / "last")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "last")
    assert model.config.num_identities == data["train"].features["pid"].num_classes
    assert processor.size["height"] == 32


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

    crashing = ReIDTrainer(arguments(tmp_path / "resumed", eval_every=0), data=data)
    real_epoch = crashing._train_epoch

    def crash_in_second_epoch(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        real_epoch(epoch)

    monkeypatch.setattr(crashing, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert not (tmp_path / "resumed" / "last").exists()
    second = ReIDTrainer(arguments(tmp_path / "resumed", eval_every=0, resume=True), data=data)
    second.train()
    expected = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


def test_resume_without_state_is_a_clear_error(tmp_path, data):
    trainer = ReIDTrainer(arguments(tmp_path, resume=True), data=data)
    with pytest.raises(FileNotFoundError, match="holds no saved state"):
        trainer.train()
