"""Unit tests of the trainer's parts: unfreezing schedule, LR schedule, arguments, groups."""

from __future__ import annotations

import json

import pytest
import torch

from reid_transformers.training import (
    BlockwiseUnfreezing,
    ReIDTrainingArguments,
    WarmupSchedule,
    parse_arguments,
)

from .test_la_transformer import tiny_model


def test_unfreezing_releases_one_block_per_period_from_the_top():
    schedule = BlockwiseUnfreezing(
        unfreeze_every=2, lr_decay=0.5, initially_unfrozen=1, lr_decay_schedule="releases"
    )
    assert [schedule.trainable_blocks(e, 3) for e in range(7)] == [1, 1, 2, 2, 3, 3, 3]
    assert [schedule.lr_factor(e, 3) for e in range(7)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.25]
    model = tiny_model()  # 3 encoder layers
    assert schedule.apply(model, epoch=2) == 2
    blocks = model.unfreezable_blocks()
    assert [all(p.requires_grad for p in b.parameters()) for b in blocks] == [True, True, False]
    assert all(p.requires_grad for p in model.vit.embeddings.parameters())
    assert all(p.requires_grad for p in model.row_classifiers.parameters())


def _replay_released_la_transformer_loop(num_epochs, unfreeze_after, lr_decay, num_blocks=12):
    """The released LA-Transformer training loop, step by step: every block frozen, then at
    each epoch with ``epoch % unfreeze_after == 0`` the counter goes up by one, the blocks
    ``blocks[num_blocks - 1 - counter:]`` are released and the rate is multiplied by
    ``lr_decay``. Returns per epoch (trainable blocks, learning-rate factor)."""
    trainable = [False] * num_blocks
    unfrozen_blocks, lr, per_epoch = 0, 1.0, []
    for epoch in range(num_epochs):
        if epoch % unfreeze_after == 0:
            unfrozen_blocks += 1
            for index in range(max(num_blocks - 1 - unfrozen_blocks, 0), num_blocks):
                trainable[index] = True
            lr *= lr_decay
        per_epoch.append((sum(trainable), lr))
    return per_epoch


def test_unfreezing_default_replays_the_released_la_transformer_loop():
    released = _replay_released_la_transformer_loop(30, unfreeze_after=2, lr_decay=0.8)
    schedule = BlockwiseUnfreezing(unfreeze_every=2, lr_decay=0.8, initially_unfrozen=2)
    assert schedule.lr_decay_schedule == "periodic"
    ours = [(schedule.trainable_blocks(e, 12), schedule.lr_factor(e, 12)) for e in range(30)]
    assert [blocks for blocks, _ in ours] == [blocks for blocks, _ in released]
    assert [lr for _, lr in ours] == pytest.approx([lr for _, lr in released], rel=1e-12)
    assert released[0] == (2, pytest.approx(0.8)) and released[-1][1] == pytest.approx(0.8**15)
    # The released loop logged lr 4.0265e-05 for epoch 16 at 3e-4 (9 decays).
    assert 3e-4 * schedule.lr_factor(16, 12) == pytest.approx(4.026531840000002e-05)


def test_frozen_blocks_stay_bit_identical_under_the_optimizer():
    model = tiny_model().train()
    BlockwiseUnfreezing(initially_unfrozen=1).apply(model, epoch=0)
    frozen = model.unfreezable_blocks()[-1]
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    optimizer = torch.optim.AdamW(
        model.optimizer_parameter_groups(1e-2, weight_decay=0.1), lr=1e-2
    )
    x, y = torch.randn(8, 3, 32, 16), torch.arange(8) % 5
    top_before = model.unfreezable_blocks()[0].norm1.weight.clone()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        model(x, labels=y).loss.backward()
        optimizer.step()
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(model.unfreezable_blocks()[0].norm1.weight, top_before)


def test_unfreezing_rejects_bad_settings():
    with pytest.raises(ValueError, match="unfreeze_every"):
        BlockwiseUnfreezing(unfreeze_every=0)
    with pytest.raises(ValueError, match="lr_decay"):
        BlockwiseUnfreezing(lr_decay=0)
    with pytest.raises(ValueError, match="lr_decay_schedule must be one of"):
        BlockwiseUnfreezing(lr_decay_schedule="stepwise")


def test_warmup_then_cosine_and_multistep():
    cosine = WarmupSchedule("cosine", total=10, warmup=2, warmup_factor=0.1, unit="epoch")
    factors = [cosine.factor(epoch, step=5 * epoch) for epoch in range(10)]
    assert factors[0] == pytest.approx(0.1) and factors[1] == pytest.approx(0.55)
    assert factors[2] == pytest.approx(1.0)
    assert factors[-1] < factors[3] and factors == sorted(factors[:3]) + factors[3:]
    assert cosine.factor(3, step=17) == cosine.factor(3, step=19)  # constant within an epoch
    steps = WarmupSchedule("multistep", total=100, milestones=(40, 90), gamma=0.1, unit="step")
    assert [steps.factor(0, s) for s in (0, 39, 40, 95)] == pytest.approx([1, 1, 0.1, 0.01])
    # fast-reid: warm-up counted in iterations, decay at epochs.
    mixed = WarmupSchedule(
        "multistep", total=120, warmup=100, warmup_factor=0.1, milestones=(40, 90),
        unit="epoch", warmup_unit="step",
    )
    assert mixed.factor(0, 0) == pytest.approx(0.1) and mixed.factor(2, 50) == pytest.approx(0.55)
    assert mixed.factor(2, 100) == 1.0 and mixed.factor(45, 10_000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_unit must be one of"):
        WarmupSchedule(warmup_unit="iteration")
    with pytest.raises(ValueError, match="schedule must be one of"):
        WarmupSchedule("linear")
    with pytest.raises(ValueError, match="milestones must be increasing"):
        WarmupSchedule("multistep", total=10, milestones=(5, 2))


def test_optimizer_groups_split_trunk_and_decay():
    model = tiny_model()
    groups = model.optimizer_parameter_groups(1e-3, weight_decay=5e-4, trunk_lr_factor=0.1)
    by_name = {g["group_name"]: g for g in groups}
    assert set(by_name) == {"trunk_decay", "trunk_no_decay", "new_decay", "new_no_decay"}
    assert by_name["trunk_decay"]["lr"] == pytest.approx(1e-4)
    assert by_name["new_decay"]["lr"] == pytest.approx(1e-3)
    assert by_name["trunk_no_decay"]["weight_decay"] == 0.0
    ids = {id(p) for p in by_name["trunk_no_decay"]["params"]}
    assert id(model.vit.embeddings.cls_token) in ids
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_weight_decay_scope_all_decays_every_parameter():
    model = tiny_model()
    groups = model.optimizer_parameter_groups(1e-3, 5e-4, weight_decay_scope="all")
    assert {g["group_name"] for g in groups} == {"trunk_decay", "new_decay"}
    assert all(g["weight_decay"] == 5e-4 for g in groups)
    decayed = {id(p) for g in groups for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}
    assert id(model.vit.embeddings.cls_token) in decayed
    with pytest.raises(ValueError, match="weight_decay_scope must be one of"):
        model.optimizer_parameter_groups(1e-3, 5e-4, weight_decay_scope="norms")


def test_optimizer_groups_put_transformer_layers_at_their_own_rate():
    from reid_transformers.models.hat import HATConfig, HATModel

    model = HATModel(HATConfig(
        image_size=(64, 32), bottleneck_depth=1, tfc_depths=(1, 0, 1),
        tfc_hidden_sizes=(16, 24, 32), tfc_num_heads=2, tfc_head_dim=8, tfc_intermediate_size=32,
    ))
    groups = model.optimizer_parameter_groups(4e-4, 5e-4, transformer_lr_factor=0.5)
    by_name = {g["group_name"]: g for g in groups}
    assert by_name["transformer_decay"]["lr"] == pytest.approx(2e-4)
    assert by_name["trunk_decay"]["lr"] == by_name["new_decay"]["lr"] == pytest.approx(4e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    transformer = {names[id(p)] for g in groups if g["group_name"].startswith("transformer")
                   for p in g["params"]}
    # Only the TFC transformer layers: not their embeddings, class tokens or positions.
    assert transformer == {n for n in names.values() if ".encoder." in n}
    assert transformer and all(n.startswith("calibrations.") for n in transformer)
    no_decay = {names[id(p)] for p in by_name["new_no_decay"]["params"]}
    assert "calibrations.1.embeddings.cls_token" in no_decay
    assert "calibrations.3.embeddings.position_embeddings" in no_decay


def test_arguments_from_flags_preset_and_files(tmp_path):
    args = parse_arguments(["--preset", "tiny", "--epochs", "2"])
    assert args.epochs == 2 and args.image_size == (64, 32)  # flag wins, preset fills
    assert parse_arguments(["--preset", "tiny", "--epochs=3"]).epochs == 3
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "tiny", "learning_rate": 0.01}))
    from_file = parse_arguments([str(path)])
    assert from_file.learning_rate == 0.01 and from_file.blockwise_unfreezing
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("epochs: 4\noptimizer: sgd\n")
    assert parse_arguments([str(yaml_path)]).optimizer == "sgd"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epocks": 3}))
    with pytest.raises(ValueError, match="unknown arguments"):
        parse_arguments([str(bad)])
    aaformer = parse_arguments(["--preset", "aaformer"])
    assert (aaformer.model, aaformer.optimizer, aaformer.learning_rate) == ("aaformer", "sgd", 8e-3)
    assert aaformer.warmup == 10 and aaformer.warmup_factor == 0.1
    pan = parse_arguments(["--preset", "pan"])
    assert (pan.trunk_lr_factor, pan.milestones, pan.schedule_unit) == (0.1, [5000, 7500], "step")
    hat = parse_arguments(["--preset", "hat"])
    assert (hat.model, hat.learning_rate, hat.transformer_lr_factor) == ("hat", 4e-4, 0.5)
    assert (hat.epochs, hat.milestones, hat.gamma, hat.warmup, hat.warmup_factor) == (
        150, [50, 70, 90, 110, 130], 0.4, 10, 0.01,
    )
    prct = parse_arguments(["--preset", "prct", "--epochs", "60"])
    assert (prct.model, prct.learning_rate, prct.milestones, prct.epochs) == (
        "prct", 3.5e-4, [40, 90], 60,
    )
    assert (prct.warmup, prct.warmup_unit, prct.schedule_unit) == (2000, "step", "epoch")
    assert prct.random_patch_probability == 0.5 and prct.erasing_probability == 0.5
    with pytest.raises(ValueError, match="unknown preset"):
        parse_arguments(["--preset", "huge"])


def test_explicit_flags_win_over_the_preset_in_either_spelling():
    assert parse_arguments(["--preset", "aaformer", "--learning-rate", "0.1"]).learning_rate == 0.1
    assert parse_arguments(["--preset", "aaformer", "--learning_rate=0.2"]).learning_rate == 0.2
    assert parse_arguments(["--preset", "aaformer", "--max-steps", "7"]).max_steps == 7


def test_every_training_argument_has_help_text():
    import dataclasses

    missing = [f.name for f in dataclasses.fields(ReIDTrainingArguments)
               if not f.metadata.get("help")]
    assert not missing


def test_paper_presets_follow_their_reference_code():
    la = parse_arguments(["--preset", "la_transformer"])
    assert (la.sampler, la.batch_size, la.weight_decay_scope) == ("random", 32, "all")
    assert (la.initially_unfrozen, la.lr_decay, la.lr_decay_schedule) == (2, 0.8, "periodic")
    assert (la.crop_padding, la.erasing_probability, la.flip_probability) == (0, 0.0, 0.5)
    # The preset's shuffled-batch size does not force the random sampler on a P x K run.
    la_pk = parse_arguments(["--preset", "la_transformer", "--sampler", "pk"])
    assert (la_pk.sampler, la_pk.batch_size) == ("pk", None)
    pan = parse_arguments(["--preset", "pan"])
    assert (pan.max_steps, pan.erasing_probability) == (10000, 0.5)
    for name in ("la_transformer", "aaformer", "pan", "hat", "prct"):
        assert parse_arguments(["--preset", name]).weight_decay_scope == "all", name
    tiny = parse_arguments(["--preset", "tiny"])
    assert tiny.lr_decay_schedule == "releases"
    assert (tiny.warmup, tiny.warmup_unit, tiny.schedule_unit) == (30, "step", "epoch")


def test_sampling_and_budget_arguments_are_checked():
    with pytest.raises(ValueError, match="sampler must be one of"):
        ReIDTrainingArguments(sampler="balanced")
    with pytest.raises(ValueError, match="batch_size applies to --sampler random"):
        ReIDTrainingArguments(batch_size=32)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        ReIDTrainingArguments(sampler="random", batch_size=1)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 0"):
        ReIDTrainingArguments(max_steps=-1)
    with pytest.raises(ValueError, match="weight_decay_scope must be one of"):
        ReIDTrainingArguments(weight_decay_scope="bias")
    with pytest.raises(ValueError, match="lr_decay_schedule must be one of"):
        ReIDTrainingArguments(lr_decay_schedule="never")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ReIDTrainingArguments(optimizer="lamb")


def test_model_overrides_are_checked_before_anything_is_loaded():
    # Arguments are checked when they are built, before a dataset or weights are read.
    with pytest.raises(ValueError, match=r"\['tfc_depth'\] are not fields of HATConfig"):
        ReIDTrainingArguments(model="hat", model_overrides='{"tfc_depth": [1, 1, 1]}')
    # Overrides given for one architecture are refused by another, naming the preset.
    with pytest.raises(ValueError, match=r"\['patch_size'\] \(with --preset tiny\)"):
        parse_arguments(["--preset", "tiny", "--model", "hat", "--model_overrides",
                         '{"patch_size": 8}'])
    # A preset that chooses the model: the overrides are checked against its architecture.
    hat = parse_arguments(["--preset", "hat", "--model_overrides", '{"aux_lambda": 0}'])
    assert (hat.model, json.loads(hat.model_overrides)) == ("hat", {"aux_lambda": 0})
    with pytest.raises(ValueError, match="model_overrides must be a JSON object"):
        ReIDTrainingArguments(model_overrides="{hidden_size: 64}")
    with pytest.raises(ValueError, match="model_overrides must be a JSON object"):
        ReIDTrainingArguments(model_overrides="[1, 2]")


@pytest.mark.parametrize("architecture", ["la_transformer", "aaformer", "pan", "hat", "prct"])
def test_tiny_preset_builds_a_cpu_sized_model_of_every_architecture(architecture):
    from reid_transformers.training.trainer import build_model_and_processor

    args = parse_arguments(["--preset", "tiny", "--model", architecture])
    model, processor = build_model_and_processor(args, num_identities=6)
    assert model.config.model_type == architecture
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert (processor.size["height"], processor.size["width"]) == (64, 32)
    if architecture in ("pan", "hat", "prct"):
        assert model.config.layer_type == "basic" and model.config.depths == (1, 1, 1, 1)
    model.train()
    labels = torch.arange(8) % 4
    model(torch.randn(8, 3, 64, 32), labels=labels).loss.backward()
    # Explicit overrides refine the preset's key by key.
    refined = parse_arguments(
        ["--preset", "tiny", "--model", architecture,
         "--model_overrides", '{"initializer_range": 0.01}']
    )
    merged = json.loads(refined.model_overrides)
    assert merged["initializer_range"] == 0.01 and set(merged) > {"initializer_range"}


def test_fine_tuning_a_checkpoint_at_another_size_keeps_its_grid_parameters(tmp_path):
    from reid_transformers import PRCTConfig, PRCTImageProcessor, PRCTModel
    from reid_transformers.training.trainer import build_model_and_processor

    torch.manual_seed(0)
    source = PRCTModel(PRCTConfig(
        image_size=(64, 32), num_identities=3, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, linformer_k=4,
    ))
    source.save_pretrained(tmp_path)
    PRCTImageProcessor(size={"height": 64, "width": 32}).save_pretrained(tmp_path)
    args = ReIDTrainingArguments(model=str(tmp_path), image_size=[96, 32])
    model, processor = build_model_and_processor(args, num_identities=7)
    assert (processor.size["height"], processor.size["width"]) == (96, 32)
    assert model.config.image_size == (64, 32) and model.config.num_identities == 7
    trained = source.state_dict()
    for name, value in model.state_dict().items():
        if not name.startswith("neck.classifier"):  # the new identity head
            assert torch.equal(value, trained[name]), name
    model.train()(torch.randn(4, 3, 96, 32), labels=torch.tensor([0, 0, 1, 1])).loss.backward()


@pytest.mark.parametrize("name", ["la_transformer", "aaformer", "pan", "hat", "prct"])
def test_recipe_files_in_configs_are_the_presets(name):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    from_file = parse_arguments([str(recipe)])
    from_preset = parse_arguments(["--preset", name])
    differing = {
        field: (getattr(from_file, field), getattr(from_preset, field))
        for field in from_file.to_dict()
        if field != "preset" and getattr(from_file, field) != getattr(from_preset, field)
    }
    assert not differing


def test_flags_after_a_recipe_file_override_it(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("preset: hat\nepochs: 5\nlearning_rate: 0.001\n")
    args = parse_arguments([str(recipe), "--epochs", "7", "--dataset", "market1501"])
    assert (args.epochs, args.learning_rate, args.dataset) == (7, 0.001, "market1501")
    assert args.milestones == [50, 70, 90, 110, 130]  # the preset fills the rest
