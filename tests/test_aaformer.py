from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reid_transformers import AAformerConfig, AAformerImageProcessor, AAformerModel
from reid_transformers.backbones import ViTBackbone
from reid_transformers.losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing

from .reid_model_tests import ReIDModelTests

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


def tiny_model(**overrides):
    torch.manual_seed(0)
    return AAformerModel(TestAAformer().tiny_config(**overrides)).eval()


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
        ({"ot_epsilon": 0}, "ot_epsilon must be > 0"),
        ({"ot_iterations": 0}, "ot_iterations must be an integer >= 1"),
        ({"triplet_margin": -1.0}, "triplet_margin must be > 0 or None"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
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
