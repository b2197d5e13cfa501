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

from .reid_model_tests import ReIDModelTests

TINY = dict(
    image_size=(64, 32), num_identities=5, bottleneck_depth=1, tfc_hidden_sizes=(16, 24, 32),
    tfc_num_heads=2, tfc_head_dim=8, tfc_intermediate_size=32, frozen_batch_norm=True,
)


class TestHAT(ReIDModelTests):
    model_class = HATModel
    processor_class = HATImageProcessor
    alternative_image_size = (96, 32)

    def tiny_config(self, **overrides):
        attn = overrides.pop("attn_implementation", None)
        config = HATConfig(**{**TINY, **overrides})
        if attn is not None:
            config._attn_implementation = attn
        return config


def tiny_model(**overrides):
    torch.manual_seed(0)
    return HATModel(TestHAT().tiny_config(**overrides))


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


@pytest.mark.parametrize("overrides", [{}, {"tfc_depths": (0, 2, 1)}, {"tfc_norm": "post"}])
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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tfc_depths": (0, 0, 0)}, "at least one positive"),
        ({"tfc_depths": (3, 3)}, "tfc_depths must be three"),
        ({"tfc_depths": (3, -1, 6)}, "tfc_depths must be three"),
        ({"tfc_hidden_sizes": (256, 766, 2048)}, "multiples of 4"),
        ({"tfc_norm": "sandwich"}, "tfc_norm"),
        ({"tfc_dropout": 1.0}, "tfc_dropout"),
        ({"aux_lambda": -0.1}, "aux_lambda"),
        ({"scale_factor": 0}, "scale_factor"),
        ({"last_stride": 3}, "last_stride"),
        ({"triplet_margin": 0}, "triplet_margin"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        HATConfig(**overrides)
