from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reid_transformers.backbones import feature_grid
from reid_transformers.configuration_utils import ConfigView
from reid_transformers.losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from reid_transformers.models.hat import (
    HATConfig,
    HATImageProcessor,
    HATModel,
    scale_to_grid,
)

from .reid_model_tests import TINY_TRUNK, ReIDModelTests

TINY = dict(
    image_size=(64, 32), num_identities=5, bottleneck_depth=1, tfc_hidden_sizes=(16, 24, 32),
    tfc_num_heads=2, tfc_head_dim=8, tfc_intermediate_size=32, frozen_batch_norm=True,
)


class TestHAT(ReIDModelTests):
    model_class = HATModel
    processor_class = HATImageProcessor
    alternative_image_size = (96, 32)

    def tiny_config(self, **overrides):
        # The shared suite runs on the tiny trunk; this file's own tests on ResNet-50's
        # stage widths, which their expected values spell out.
        attn = overrides.pop("attn_implementation", None)
        config = HATConfig(**{**TINY_TRUNK, **TINY, **overrides})
        if attn is not None:
            config._attn_implementation = attn
        return config


def tiny_model(**overrides):
    torch.manual_seed(0)
    return HATModel(HATConfig(**{**TINY, **overrides}))


def capture_dsa(model: HATModel, pixel_values: torch.Tensor) -> dict:
    """Inputs and outputs of every module of the aggregation chain, from forward hooks."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for group in ("bottlenecks", "calibrations", "adjustments"):
        for key, module in getattr(model, group).items():
            def hook(module, args, output, name=f"{group}.{key}"):
                seen[name + ".in"] = args[0]
                seen[name + ".out"] = output
            handles.append(module.register_forward_hook(hook))
    handles.append(model.resnet.register_forward_hook(
        lambda module, args, output: seen.__setitem__("stages", output)
    ))
    model(pixel_values)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    ("depths", "expected_channels"),
    [
        ((1, 1, 2), {"1": 256, "2": 512 + 16, "3": 1024 + 24}),
        ((1, 0, 2), {"1": 256, "3": 1024 + 16}),
        ((0, 1, 1), {"2": 512, "3": 1024 + 24}),
        ((1, 1, 0), {"1": 256, "2": 512 + 16}),
    ],
)
def test_each_level_consumes_its_scaled_map_and_the_previous_calibrated_map(
    depths, expected_channels
):
    model = tiny_model(tfc_depths=depths).eval()
    assert model.calibration_input_channels() == expected_channels
    # Only non-final levels have a Neighbourhood Adjustment (the last one's output is unused).
    assert list(model.adjustments) == list(expected_channels)[:-1]
    seen = capture_dsa(model, torch.randn(2, 3, 64, 32))
    grid = feature_grid(64, 32, 16)
    previous = None
    for key in expected_channels:
        refined = seen[f"bottlenecks.{key}.out"]
        scaled = scale_to_grid(refined, grid)
        expected = scaled if previous is None else torch.cat((scaled, previous), dim=1)
        torch.testing.assert_close(seen[f"calibrations.{key}.in"], expected)
        assert seen[f"bottlenecks.{key}.in"] is seen["stages"][int(key) - 1]
        if key in model.adjustments:
            # NA consumes this level's patch tokens reshaped to the grid.
            patch_map = seen[f"calibrations.{key}.out"][1]
            assert seen[f"adjustments.{key}.in"] is patch_map
            assert patch_map.shape == (2, model.config.tfc_hidden_sizes[int(key) - 1], *grid)
            previous = seen[f"adjustments.{key}.out"]


def test_default_configuration_channels_and_parameter_count():
    config = HATConfig()
    model = HATModel(config)
    assert model.calibration_input_channels() == {"1": 256, "2": 256 + 512, "3": 768 + 1024}
    assert [model.calibrations[k].embeddings.projection.out_features for k in "123"] == [
        256, 768, 2048,
    ]
    assert [len(model.calibrations[k].encoder.layers) for k in "123"] == [3, 3, 6]
    assert model.calibrations["3"].encoder.layers[0].attention.attention.inner_size == 16 * 64
    # Released code: logits scaled by the width, 1/16, 1/27.7, 1/45.3 (not 1/8 = 64 ** -0.5).
    scalings = [model.calibrations[k].encoder.layers[0].attention.attention.scaling for k in "123"]
    assert scalings == pytest.approx([1 / 16, 1 / 27.713, 1 / 45.255], rel=1e-4)
    # The released code's effective 167 M includes a Neighbourhood Adjustment on the last
    # level whose output nothing reads; without it and without heads: 159.3 M.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(159.29e6, rel=1e-3)


def test_loss_is_the_documented_composition():
    model = tiny_model(tfc_depths=(1, 1, 1), aux_lambda=0.25).train()
    x, labels = torch.randn(8, 3, 64, 32), torch.arange(8) % 4
    torch.manual_seed(1)
    out = model(x, labels=labels)
    b, t1, t2, t3 = out.logits
    fb, f1, f2, f3 = out.features
    assert fb.shape == (8, 2048) and f3.shape == (8, 32)

    def term(logits, feature):
        return cross_entropy_with_label_smoothing(logits, labels, 0.1) + batch_hard_triplet_loss(
            feature, labels, 0.3
        )

    expected = term(b, fb) + term(t3, f3) + 0.25 * (term(t1, f1) + term(t2, f2))
    torch.testing.assert_close(out.loss, expected)


def test_test_embedding_is_normalised_concat_of_post_bn_global_and_final_features():
    model = tiny_model().eval()
    x = torch.randn(3, 3, 64, 32)
    out = model(x)
    global_feature, *_, final_feature = out.features
    expected = F.normalize(
        torch.cat((model.global_neck.bn(global_feature), model.level_necks["3"].bn(final_feature)),
                  dim=-1),
        dim=-1,
    )
    torch.testing.assert_close(out.embeddings, expected)
    assert out.embeddings.shape == (3, 2048 + 32)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tfc_depths": (0, 2, 1)},
        {"tfc_norm": "post"},
        {"tfc_depths": (1, 1, 1, 1), "tfc_hidden_sizes": (16, 24, 32, 40)},
        {"neighbourhood_adjustment": False},
        {"aux_lambda": 0},
    ],
)
def test_every_parameter_gets_a_gradient_in_a_training_step(overrides):
    model = tiny_model(frozen_batch_norm=False, **overrides).train()
    model(torch.randn(4, 3, 64, 32), labels=torch.tensor([0, 0, 1, 1])).loss.backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.endswith("neck.bn.bias") or ".bn.bias" in n for n in frozen)


def test_skipped_level_has_no_modules_and_no_head():
    model = tiny_model(tfc_depths=(0, 2, 0)).eval()
    assert list(model.calibrations) == ["2"] and not model.adjustments
    out = model(torch.randn(2, 3, 64, 32))
    assert len(out.logits) == 2 and out.embeddings.shape == (2, 2048 + 24)
    labels = torch.tensor([0, 0, 1, 1])
    trained = model.train()(torch.randn(4, 3, 64, 32), labels=labels)
    b, t2 = trained.logits
    fb, f2 = trained.features
    expected = sum(
        cross_entropy_with_label_smoothing(logits, labels, 0.1)
        + batch_hard_triplet_loss(feature, labels, 0.3)
        for logits, feature in ((b, fb), (t2, f2))
    )
    torch.testing.assert_close(trained.loss, expected)  # no auxiliary level: no aux term


def test_token_grid_follows_the_input_size():
    model = tiny_model().eval()
    for size in [(64, 32), (96, 48), (80, 40)]:
        seen = capture_dsa(model, torch.randn(1, 3, *size))
        grid = (-(-size[0] // 16), -(-size[1] // 16))
        assert seen["calibrations.1.in"].shape[-2:] == grid
        assert seen["stages"][2].shape[-2:] == grid  # the stage-3 map at scale 16


def test_post_norm_layers_normalise_after_each_residual():
    model = tiny_model(tfc_norm="post", tfc_dropout=0.0).eval()
    layer = model.calibrations["1"].encoder.layers[0]
    x = torch.randn(2, 9, 16)
    attention, _ = layer.attention(x)
    hidden = layer.norm1(x + attention)
    expected = layer.norm2(hidden + layer.mlp(hidden))
    torch.testing.assert_close(layer(x)[0], expected)
    pre = tiny_model(tfc_dropout=0.0).eval().calibrations["1"].encoder.layers[0]
    attention, _ = pre.attention(pre.norm1(x))
    hidden = x + attention
    torch.testing.assert_close(pre(x)[0], hidden + pre.mlp(pre.norm2(hidden)))


def test_scale_to_grid_pools_down_and_upsamples_bilinearly():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(scale_to_grid(x, (2, 2)), torch.tensor([[[[5.0, 7.0],
                                                                          [13.0, 15.0]]]]))
    small = torch.randn(1, 3, 2, 1)
    torch.testing.assert_close(
        scale_to_grid(small, (4, 2)),
        F.interpolate(small, size=(4, 2), mode="bilinear", align_corners=False),
    )
    assert torch.equal(scale_to_grid(x, (4, 4)), x)


def test_attentions_are_returned_per_calibration_layer():
    model = tiny_model(tfc_depths=(1, 1, 2), attn_implementation="eager").eval()
    out = model(torch.randn(2, 3, 64, 32), output_attentions=True)
    assert len(out.attentions) == 4
    assert all(a.shape == (2, 2, 1 + 4 * 2, 1 + 4 * 2) for a in out.attentions)


def test_config_view_reads_through_and_is_read_only():
    config = HATConfig()
    view = ConfigView(config, hidden_size=7)
    assert view.hidden_size == 7 and view.tfc_head_dim == 64
    config._attn_implementation = "eager"
    assert view._attn_implementation == "eager"
    with pytest.raises(AttributeError, match="read-only"):
        view.hidden_size = 3


def hand_attention(attention, x: torch.Tensor, heads: int, head_dim: int, scale: float):
    """``proj(softmax(q k^T * scale) v)`` for a `ViTAttention` without qkv bias."""
    batch, tokens, _ = x.shape
    q, k, v = (attention.attention.qkv(x).reshape(batch, tokens, 3, heads, head_dim)
               .permute(2, 0, 3, 1, 4))
    weights = (q @ k.transpose(-1, -2) * scale).softmax(-1)
    context = (weights @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return attention.proj(context)


@pytest.mark.parametrize(("attention_scale", "scale_of"), [
    ("width", lambda width, head_dim: width ** -0.5),
    ("head_dim", lambda width, head_dim: head_dim ** -0.5),
])
def test_tfc_attention_is_scaled_by_the_configured_factor_in_eager_and_sdpa(
    attention_scale, scale_of
):
    assert HATConfig().attention_scale == "width"  # released code
    model = tiny_model(attention_scale=attention_scale, attn_implementation="eager").eval()
    x = torch.randn(2, 9, 24)
    attention = model.calibrations["2"].encoder.layers[0].attention  # width 24, 2 heads x 8
    expected = hand_attention(attention, x, heads=2, head_dim=8, scale=scale_of(24, 8))
    with torch.no_grad():
        eager, _ = attention(x)
        model.set_attn_implementation("sdpa")
        sdpa, _ = attention(x)
    torch.testing.assert_close(eager, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa, expected, atol=1e-5, rtol=1e-5)


def test_tfc_dropout_sits_on_embeddings_ffn_and_projections_not_on_attention_weights():
    model = tiny_model(tfc_dropout=0.5).train()
    calibration = model.calibrations["1"]
    layer = calibration.encoder.layers[0]
    assert calibration.embeddings.dropout.p == 0.5
    assert layer.attention.dropout.p == 0.5  # after the output projection
    assert layer.attention.attention.attention_dropout == 0.0
    x = torch.randn(2, 9, 16)
    # No dropout on the attention weights: the core attends identically in train and eval.
    trained_context, _ = layer.attention.attention(x)
    torch.testing.assert_close(trained_context, layer.attention.attention.eval()(x)[0])
    # Feed-forward: dropout after the activation, then after fc2 (same random draws).
    mlp = layer.mlp
    torch.manual_seed(4)
    hidden = F.dropout(F.gelu(mlp.fc1(x)), 0.5, training=True)
    expected = F.dropout(mlp.fc2(hidden), 0.5, training=True)
    torch.manual_seed(4)
    torch.testing.assert_close(mlp(x), expected)
    assert tiny_model(tfc_attention_dropout=0.2).calibrations["1"].encoder.layers[0] \
        .attention.attention.attention_dropout == 0.2


def test_class_tokens_and_positions_are_initialised_standard_normal():
    def token_values(model):
        return torch.cat([
            torch.cat((tfc.embeddings.cls_token.flatten(),
                       tfc.embeddings.position_embeddings.flatten()))
            for tfc in model.calibrations.values()
        ])

    values = token_values(tiny_model())  # 27 tokens x (16 + 24 + 32) channels / 3 levels
    assert values.std().item() == pytest.approx(1.0, abs=0.1)
    assert values.abs().max().item() > 2.0  # plain normal: not truncated at 2 std
    vit_like = token_values(tiny_model(tfc_token_init_std=0.02))
    assert vit_like.std().item() == pytest.approx(0.02, abs=0.004)


def test_only_the_tfc_transformer_layers_get_the_transformer_learning_rate():
    model = tiny_model(tfc_depths=(1, 1, 1, 1), tfc_hidden_sizes=(16, 24, 32, 40))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.optimizer_parameter_groups(1.0, 0.0, transformer_lr_factor=0.5)
    transformer_groups = [g for g in groups if g["group_name"].startswith("transformer")]
    transformer = {names[id(p)] for g in transformer_groups for p in g["params"]}
    assert all(g["lr"] == 0.5 for g in transformer_groups)
    expected = {n for n in names.values() if n.startswith("calibrations.") and ".encoder." in n}
    assert transformer == expected and {n.split(".")[1] for n in expected} == set("1234")
    # TFC embeddings (projection, class token, positions) train at the full rate.
    assert "calibrations.2.embeddings.cls_token" not in transformer
    assert "calibrations.2.embeddings.projection.weight" not in transformer
    assert not any(n.startswith(("adjustments.", "bottlenecks.", "level_necks.")) for n in
                   transformer)


@pytest.mark.parametrize("last_stride", [1, 2])
def test_stage_four_as_a_fourth_level_trains(last_stride):
    model = tiny_model(
        tfc_depths=(1, 1, 1, 1), tfc_hidden_sizes=(16, 24, 32, 40), last_stride=last_stride
    ).train()
    assert model.calibration_input_channels() == {
        "1": 256, "2": 512 + 16, "3": 1024 + 24, "4": 2048 + 32,
    }
    assert list(model.adjustments) == ["1", "2", "3"]
    labels = torch.tensor([0, 0, 1, 1])
    out = model(torch.randn(4, 3, 64, 32), labels=labels)
    assert len(out.logits) == 5 and out.embeddings.shape == (4, 2048 + 40)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # Three-level configs stay the default.
    assert HATConfig().tfc_depths == (3, 3, 6) and len(tiny_model().calibrations) == 3


def test_without_neighbourhood_adjustment_the_next_level_reads_the_patch_map():
    model = tiny_model(neighbourhood_adjustment=False).eval()
    assert not model.adjustments
    seen = capture_dsa(model, torch.randn(2, 3, 64, 32))
    for previous, key in (("1", "2"), ("2", "3")):
        patch_map = seen[f"calibrations.{previous}.out"][1]
        scaled = scale_to_grid(seen[f"bottlenecks.{key}.out"], feature_grid(64, 32, 16))
        torch.testing.assert_close(
            seen[f"calibrations.{key}.in"], torch.cat((scaled, patch_map), dim=1)
        )
    trained = model.train()(torch.randn(4, 3, 64, 32), labels=torch.tensor([0, 0, 1, 1]))
    trained.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_without_deep_supervision_auxiliary_levels_have_no_heads_and_no_loss():
    model = tiny_model(aux_lambda=0).train()
    assert list(model.level_necks) == ["3"] and list(model.calibrations) == ["1", "2", "3"]
    labels = torch.arange(8) % 4
    out = model(torch.randn(8, 3, 64, 32), labels=labels)
    (b, t3), (fb, f3) = out.logits, out.features
    expected = sum(
        cross_entropy_with_label_smoothing(logits, labels, 0.1)
        + batch_hard_triplet_loss(feature, labels, 0.3)
        for logits, feature in ((b, fb), (t3, f3))
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    # The auxiliary levels still train, through the final level.
    assert model.calibrations["1"].embeddings.cls_token.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tfc_depths": (0, 0, 0)}, "at least one positive"),
        ({"tfc_depths": (3, 3)}, "tfc_depths must be three or four"),
        ({"tfc_depths": (3, 3, 6, 3, 3)}, "tfc_depths must be three or four"),
        ({"tfc_depths": (3, 3, 6, 3)}, "one width per level"),
        ({"tfc_depths": (3, -1, 6)}, "tfc_depths must be three"),
        ({"attention_scale": "sqrt"}, "attention_scale"),
        ({"tfc_attention_dropout": 1.0}, "tfc_attention_dropout"),
        ({"tfc_token_init_std": -1.0}, "tfc_token_init_std"),
        ({"neighbourhood_adjustment": "no"}, "neighbourhood_adjustment"),
        ({"tfc_hidden_sizes": (256, 766, 2048)}, "multiples of 4"),
        ({"tfc_norm": "sandwich"}, "tfc_norm"),
        ({"tfc_hidden_act": "swishy"}, "tfc_hidden_act must be a transformers activation"),
        ({"tfc_dropout": 1.0}, "tfc_dropout"),
        ({"aux_lambda": -0.1}, "aux_lambda"),
        ({"scale_factor": 0}, "scale_factor"),
        ({"last_stride": 3}, "last_stride"),
        ({"triplet_margin": 0}, "triplet_margin"),
        ({"layer_type": "basic", "hidden_sizes": (18, 32, 64, 128)}, "divisible by 4"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        HATConfig(**overrides)


def test_model_card_states_the_stem_and_the_recipe_of_the_released_code():
    from reid_transformers.hub import render_model_card

    plain = str(render_model_card(HATConfig(**TINY), model_name="hat"))
    released = str(render_model_card(HATConfig(**TINY, stem_activation=False), model_name="hat"))
    assert "ReLU after its first" in " ".join(plain.split())
    assert "has no ReLU after its first BatchNorm" in " ".join(released.split())
    assert "150 epochs" in plain and "on every parameter" in plain
