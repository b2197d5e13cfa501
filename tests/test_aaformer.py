from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reid_transformers import AAformerConfig, AAformerImageProcessor, AAformerModel
from reid_transformers.backbones import ViTBackbone
from reid_transformers.losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from reid_transformers.models.aaformer import stripe_assignments
from reid_transformers.models.aaformer.modeling_aaformer import AutoAlignmentMask

from .reid_model_tests import ReIDModelTests, dead_parameters

TINY = dict(
    image_size=(32, 16), patch_size=8, patch_stride=8, hidden_size=32, num_hidden_layers=3,
    num_attention_heads=4, intermediate_size=64, num_identities=5, drop_path_rate=0.0,
)


class TestAAformer(ReIDModelTests):
    model_class = AAformerModel
    processor_class = AAformerImageProcessor
    alternative_image_size = (48, 24)

    def tiny_config(self, **overrides):
        attn = overrides.pop("attn_implementation", None)
        config = AAformerConfig(**{**TINY, **overrides})
        if attn is not None:
            config._attn_implementation = attn
        return config


class TestAAformerStripesPartsVisible(TestAAformer):
    """Fixed horizontal stripes, with [CLS] and patches also attending to the parts."""

    def tiny_config(self, **overrides):
        return super().tiny_config(
            **{"assignment": "stripes", "parts_visible_to_all": True, **overrides}
        )


class TestAAformerUnaligned(TestAAformer):
    """The "6 x CLS" baseline: part tokens attend to every token."""

    def tiny_config(self, **overrides):
        return super().tiny_config(**{"assignment": "none", **overrides})


def tiny_model(**overrides):
    torch.manual_seed(0)
    return AAformerModel(TestAAformer().tiny_config(**overrides)).eval()


# 32x16 input, 8x8 patches: a 4 x 2 grid. Tokens: [CLS] 0, parts 1..5, patches 6..13.
PARTS, PATCHES, NOT_PARTS = slice(1, 6), slice(6, 14), [0, *range(6, 14)]


def test_every_patch_belongs_to_one_part_per_group_and_no_part_is_empty():
    model = tiny_model()
    out = model(torch.randn(3, 3, 32, 16), output_part_assignments=True)
    assert len(out.part_assignments) == 3  # one per layer
    for layer in out.part_assignments:
        assert layer.shape == (3, 4, 2, 8)  # (B, heads, groups, patches)
        first, second = layer[:, :, 0], layer[:, :, 1]
        assert first.min() >= 0 and first.max() <= 1  # parts 0-1: the group of two
        assert second.min() >= 2 and second.max() <= 4  # parts 2-4: the group of three
        for part in range(5):
            group = first if part < 2 else second
            assert (group == part).any(-1).all(), f"part {part} is empty somewhere"


def test_part_queries_attend_only_to_their_patches_and_sdpa_agrees():
    model = tiny_model(attn_implementation="eager")
    x = torch.randn(2, 3, 32, 16)
    out = model(x, output_attentions=True, output_part_assignments=True)
    for weights, assigned in zip(out.attentions, out.part_assignments, strict=True):
        # weights: (B, h, T, T) with T = 1 + 5 + 8; parts are tokens 1..5, patches 6..13
        assert torch.all(weights[:, :, :, 1:6] == 0)  # no query looks at a part token
        for part in range(5):
            group = assigned[:, :, 0 if part < 2 else 1]  # (B, h, N)
            row = weights[:, :, 1 + part, 6:]  # part query over the patches
            assert torch.all(row[group != part] == 0)
            torch.testing.assert_close(row.sum(-1), torch.ones_like(row.sum(-1)))
    sdpa = tiny_model(attn_implementation="sdpa")
    sdpa.load_state_dict(model.state_dict())
    torch.testing.assert_close(sdpa(x).embeddings, model(x).embeddings, atol=1e-5, rtol=1e-5)


def test_cls_equals_the_plain_vit_with_the_same_weights():
    model = tiny_model()
    vit = ViTBackbone(model.config)
    vit.load_state_dict(model.vit.state_dict())
    vit.eval()
    x = torch.randn(2, 3, 32, 16)
    out = model(x)
    torch.testing.assert_close(out.features[0], vit(x).last_hidden_state[:, 0], atol=1e-5,
                               rtol=1e-5)


def test_loss_and_embedding_follow_the_paper():
    model = tiny_model().train()
    x, y = torch.randn(8, 3, 32, 16), torch.arange(8) % 4
    torch.manual_seed(1)
    out = model(x, labels=y)
    assert len(out.logits) == 6
    identity = torch.stack([cross_entropy_with_label_smoothing(h, y, 0.1) for h in out.logits])
    cls, parts = out.features
    triplet = batch_hard_triplet_loss(cls, y, 0.3) + batch_hard_triplet_loss(parts, y, 0.3)
    torch.testing.assert_close(out.loss, identity.mean() + 0.5 * triplet)
    expected = F.normalize(torch.cat([cls, parts], dim=1), dim=1)
    torch.testing.assert_close(out.embeddings, expected)
    assert out.embeddings.shape == (8, 6 * 32)


def test_nearest_assignment_switch_runs():
    model = tiny_model(assignment="nearest")
    out = model(torch.randn(2, 3, 32, 16), output_part_assignments=True)
    assert out.part_assignments[0].shape == (2, 4, 2, 8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"part_granularities": (2, 0)}, "part_granularities"),
        ({"assignment": "greedy"}, "assignment must be one of"),
        ({"ot_epsilon": 0}, "ot_epsilon must be a positive finite number"),
        ({"ot_iterations": 0}, "ot_iterations must be an integer >= 1"),
        ({"triplet_margin": -1.0}, r"triplet_margin must be a positive finite number, got -1.0"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"parts_visible_to_all": 1}, "parts_visible_to_all must be a bool"),
        (
            {"assignment": "stripes", "part_granularities": (2, 5)},
            "assignment='stripes' needs at least as many patch rows as parts",
        ),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        AAformerConfig(**{**TINY, **overrides})


def test_part_assignment_picture(tmp_path):
    import numpy as np
    from PIL import Image

    from reid_transformers.models.aaformer.visualization_aaformer import (
        PART_COLORS,
        render_part_assignments,
        save_part_assignments,
    )

    model = tiny_model()
    out = model(torch.randn(1, 3, 32, 16), output_part_assignments=True)
    layer = out.part_assignments[-1][0]  # (heads, groups, N)
    image = Image.new("RGB", (16, 32), (128, 128, 128))
    picture = render_part_assignments(image, layer, grid=(4, 2), head=0, alpha=1.0)
    assert picture.size == (32, 32)  # two groups side by side
    pixels = np.asarray(picture)
    top_left_part = int(layer[0, 0, 0])
    assert tuple(pixels[0, 0]) == PART_COLORS[top_left_part]
    path = save_part_assignments(tmp_path / "parts.png", image, layer, grid=(4, 2))
    assert Image.open(path).size == (32, 32)
    with pytest.raises(ValueError, match="grid"):
        render_part_assignments(image, layer, grid=(3, 2))


def test_imagenet_vit_weights_load_into_the_backbone_and_parts_stay_fresh(tmp_path):
    from transformers import ViTConfig, ViTModel

    reference = ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, image_size=32, patch_size=8, layer_norm_eps=1e-6),
        add_pooling_layer=False,
    )
    reference.save_pretrained(tmp_path / "vit")
    model = tiny_model()
    parts_before = model.part_tokens.detach().clone()
    report = model.load_pretrained_backbone(str(tmp_path / "vit"))
    assert report.loaded and not report.missing
    fc1 = reference.state_dict()["layers.0.mlp.fc1.weight"]
    torch.testing.assert_close(model.vit.encoder.layers[0].mlp.fc1.weight, fc1)
    assert torch.equal(model.part_tokens, parts_before)


def test_part_tokens_are_initialised_and_not_weight_decayed():
    model = tiny_model()
    assert 0.005 < float(model.part_tokens.std()) < 0.05  # truncated normal, std 0.02
    groups = model.optimizer_parameter_groups(1e-3, weight_decay=5e-4)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.part_tokens) in no_decay


# ---------------------------------------------------------------- part visibility


def _masks(query, key, **overrides):
    return AutoAlignmentMask(TestAAformer().tiny_config(**overrides), None)(query, key)


def test_parts_visible_to_all_opens_exactly_the_part_columns_of_cls_and_patch_queries():
    generator = torch.Generator().manual_seed(0)
    query, key = (torch.randn(2, 4, 14, 8, generator=generator) for _ in range(2))
    hidden = _masks(query, key)
    visible = _masks(query, key, parts_visible_to_all=True)
    differs = hidden != visible  # (B, h, T, T)
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[NOT_PARTS, PARTS] = True
    assert torch.equal(differs, expected.expand_as(differs))
    assert torch.all(hidden[:, :, NOT_PARTS, PARTS] == float("-inf"))
    assert torch.all(visible[:, :, NOT_PARTS, PARTS] == 0)


def test_parts_visible_to_all_lets_cls_and_patches_attend_to_the_parts():
    x = torch.randn(2, 3, 32, 16)
    default = tiny_model(attn_implementation="eager")
    visible = tiny_model(attn_implementation="eager", parts_visible_to_all=True)
    visible.load_state_dict(default.state_dict())
    out = visible(x, output_attentions=True, output_part_assignments=True)
    for weights, assigned in zip(out.attentions, out.part_assignments, strict=True):
        assert torch.all(weights[:, :, NOT_PARTS, PARTS] > 0)
        assert torch.all(weights[:, :, PARTS, PARTS] == 0)  # part rows: their patches only
        for part in range(5):
            group = assigned[:, :, 0 if part < 2 else 1]
            assert torch.all(weights[:, :, 1 + part, PATCHES][group != part] == 0)
    # The backbone is no longer a plain ViT: the class token reads the parts.
    vit = ViTBackbone(default.config).eval()
    vit.load_state_dict(default.vit.state_dict())
    plain_cls = vit(x).last_hidden_state[:, 0]
    torch.testing.assert_close(default(x).features[0], plain_cls, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.features[0], plain_cls, atol=1e-3)


# ---------------------------------------------------------------- Table IV ablations


def test_stripe_assignments_are_contiguous_row_stripes():
    assert stripe_assignments((4, 2), 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert stripe_assignments((4, 2), 3).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    # 16 rows of 8 patches (256x128) in three stripes: 6, 5 and 5 rows.
    parts = stripe_assignments((16, 8), 3).reshape(16, 8)
    assert torch.equal(parts, parts[:, :1].expand(16, 8))  # one part per row
    assert parts[:, 0].tolist() == [0] * 6 + [1] * 5 + [2] * 5
    with pytest.raises(ValueError, match="cannot cut 2 patch rows into 3"):
        stripe_assignments((2, 2), 3)


def test_stripes_mask_is_exactly_the_row_partition():
    model = tiny_model(assignment="stripes", attn_implementation="eager")
    x = torch.randn(2, 3, 32, 16)
    out = model(x, output_attentions=True, output_part_assignments=True)
    expected = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 3, 3, 4, 4]])
    assert len(out.part_assignments) == 3
    for layer in out.part_assignments:
        assert torch.equal(layer, expected.expand(2, 4, 2, 8))
    sees = torch.zeros(5, 14, dtype=torch.bool)  # part p sees patch n iff n is in its stripe
    for group in expected:
        for patch, part in enumerate(group.tolist()):
            sees[part, 6 + patch] = True
    for weights in out.attentions:
        assert torch.equal(weights[:, :, PARTS] > 0, sees.expand(2, 4, 5, 14))
        assert torch.all(weights[:, :, NOT_PARTS, PARTS] == 0)
    sdpa = tiny_model(assignment="stripes", attn_implementation="sdpa")
    sdpa.load_state_dict(model.state_dict())
    torch.testing.assert_close(sdpa(x).embeddings, model(x).embeddings, atol=1e-5, rtol=1e-5)
    # Other input sizes cut their own rows; too few rows for a group is an error.
    taller = model(torch.randn(1, 3, 48, 16), output_part_assignments=True).part_assignments
    assert taller[0][0, 0, 1].tolist() == [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="cannot cut 2 patch rows into 3"):
        model(torch.randn(1, 3, 16, 16))


def test_unaligned_part_tokens_attend_to_every_token():
    model = tiny_model(assignment="none", attn_implementation="eager")
    x = torch.randn(2, 3, 32, 16)
    out = model(x, output_attentions=True)
    for weights in out.attentions:
        assert torch.all(weights[:, :, PARTS] > 0)  # every patch, [CLS] and the parts
        assert torch.all(weights[:, :, NOT_PARTS, PARTS] == 0)  # still hidden from the rest
    vit = ViTBackbone(model.config).eval()
    vit.load_state_dict(model.vit.state_dict())
    torch.testing.assert_close(
        out.features[0], vit(x).last_hidden_state[:, 0], atol=1e-5, rtol=1e-5
    )
    sdpa = tiny_model(assignment="none", attn_implementation="sdpa")
    sdpa.load_state_dict(model.state_dict())
    torch.testing.assert_close(sdpa(x).embeddings, out.embeddings, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="assignment='none'"):
        model(x, output_part_assignments=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"assignment": "nearest"},
        {"assignment": "stripes"},
        {"assignment": "none"},
        {"parts_visible_to_all": True},
    ],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = tiny_model(**overrides).train()
    model(torch.randn(4, 3, 32, 16), labels=torch.tensor([0, 0, 1, 1])).loss.backward()
    assert not (dead := dead_parameters(model)), dead
