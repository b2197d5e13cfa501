from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reid_transformers.models.pan import (  # noqa: I001
    PANConfig,
    PANImageProcessor,
    PANModel,
    orthogonality_loss,
)
from reid_transformers.models.pan.modeling_pan import PartFeatureLearning

from .reid_model_tests import TINY_TRUNK, ReIDModelTests, dead_parameters

TINY = dict(
    image_size=(64, 32), num_identities=5, spatial_hidden_size=16, pam_dim=8,
    embedding_size=16, channel_reduction=64, frozen_batch_norm=True,
)


class TestPAN(ReIDModelTests):
    model_class = PANModel
    processor_class = PANImageProcessor
    alternative_image_size = (96, 32)

    def tiny_config(self, **overrides):
        # The shared suite runs on the tiny trunk; this file's own tests on ResNet-50's
        # stage widths, which their expected values spell out.
        overrides.pop("attn_implementation", None)  # no attention in PAN
        return PANConfig(**{**TINY_TRUNK, **TINY, **overrides})


def tiny_model(**overrides):
    torch.manual_seed(0)
    return PANModel(PANConfig(**{**TINY, **overrides})).eval()


def test_orthogonal_loss_hand_computation_and_zero_for_orthonormal_masks():
    eye_masks = torch.zeros(1, 2, 2, 2)
    eye_masks[0, 0, 0, 0] = 1.0
    eye_masks[0, 1, 1, 1] = 1.0
    assert float(orthogonality_loss((eye_masks,))) == 0.0
    masks = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    # M = [[1,1,0,0],[1,0,0,0]]; M M^T - I = [[1,1],[1,0]] -> Frobenius sqrt(3)
    single = torch.full((1, 1, 1, 2), 1.0)  # M M^T - I = [[1]] -> 1
    expected = (3**0.5 + 1.0) / 2
    assert float(orthogonality_loss((masks, single))) == pytest.approx(expected)


def test_part_aware_attention_equals_the_explicit_formula():
    model = tiny_model()
    pam = model.part_attention[1]
    parts = torch.randn(2, 6, 2048)
    level = torch.randn(2, 512, 4, 2)
    phi = parts @ pam.phi.weight.T + pam.phi.bias  # (B, P, D)
    x = level.flatten(2)  # (B, C, N)
    psi = torch.einsum("dc,bcn->bdn", pam.psi.weight[:, :, 0, 0], x) + pam.psi.bias[:, None]
    f = torch.einsum("oc,bcn->bon", pam.f.weight[:, :, 0, 0], x) + pam.f.bias[:, None]
    expected = phi @ psi @ f.transpose(1, 2) / 8
    torch.testing.assert_close(pam(parts, level), expected, atol=1e-4, rtol=1e-4)
    assert expected.shape == (2, 6, 512)


@pytest.mark.parametrize("fusion", ["concat", "add"])
def test_both_fusions_train(fusion):
    model = tiny_model(fusion=fusion).train()
    model.resnet.requires_grad_(False)  # the heads are under test; keeps the test fast
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    x, y = torch.randn(8, 3, 64, 32), torch.arange(8) % 4
    losses = []
    for _ in range(10):
        loss = model(x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_loss_is_the_formula_with_its_terms_recomputed():
    from reid_transformers.losses import (
        batch_hard_triplet_loss,
        cross_entropy_with_label_smoothing,
    )

    model = tiny_model(label_smoothing=0.1).train()
    x, y = torch.randn(8, 3, 64, 32), torch.arange(8) % 4
    torch.manual_seed(2)
    out = model(x, labels=y, output_part_masks=True)
    identity = sum(cross_entropy_with_label_smoothing(h, y, 0.1) for h in out.logits)
    triplet = batch_hard_triplet_loss(out.features[0], y, 0.3)
    expected = identity + 1.0 * triplet + 1e-3 * orthogonality_loss(out.part_masks)
    torch.testing.assert_close(out.loss, expected)


def test_masks_output_and_embedding_shape():
    model = tiny_model()
    out = model(torch.randn(2, 3, 64, 32), output_part_masks=True)
    assert [m.shape[1] for m in out.part_masks] == [1, 2, 3]
    assert all(m.min() >= 0 for m in out.part_masks)
    assert out.embeddings.shape == (2, 6 * 16) and len(out.logits) == 6


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fusion": "mean"}, "fusion must be one of"),
        ({"part_scales": (1, 0)}, "part_scales"),
        ({"last_stride": 3}, "last_stride must be 1 or 2"),
        ({"pam_dim": 0}, "pam_dim must be a positive integer"),
        ({"image_size": (16, 16)}, "32-pixel stride"),
        ({"part_masks": "grid"}, "part_masks must be one of"),
        ({"channel_attention": "both"}, "channel_attention must be one of"),
        ({"part_aware_attention": "yes"}, "part_aware_attention must be a bool"),
        ({"pam_dim": (8, 8)}, r"pam_dim must be .* 3 of them"),
        ({"pam_dim": (8, 0, 8)}, "pam_dim must be"),
        ({"spatial_hidden_size": 0}, "spatial_hidden_size must be an integer >= 1"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        PANConfig(**{**TINY, **overrides})


def test_part_mask_picture(tmp_path):
    import numpy as np
    from PIL import Image

    from reid_transformers.models.pan.visualization_pan import render_part_masks, save_part_masks

    model = tiny_model()
    out = model(torch.randn(1, 3, 64, 32), output_part_masks=True)
    masks = tuple(m[0] for m in out.part_masks)
    image = Image.new("RGB", (32, 64), (0, 0, 255))
    picture = render_part_masks(image, masks, alpha=1.0)
    assert picture.size == (6 * 32, 64)  # one panel per part
    panels = np.asarray(picture).reshape(64, 6, 32, 3).transpose(1, 0, 2, 3)
    flat_masks = torch.cat(masks)  # (6, h, w)
    for panel, mask in zip(panels, flat_masks, strict=True):
        if mask.max() > 0:  # the mask's peak is pure red
            assert ((panel == (255, 0, 0)).all(-1)).any()
        else:  # an all-zero mask leaves the crop as it was
            assert (panel == (0, 0, 255)).all()
    assert Image.open(save_part_masks(tmp_path / "masks.png", image, masks)).size == (192, 64)
    with pytest.raises(ValueError, match="masks must be"):
        render_part_masks(image, ())


# ---------------------------------------------------------------- paper fidelity (Table 2)
TABLE_2 = {  # (fusion, pam_dim) -> millions of parameters with 751 identities
    ("concat", 256): 33.9,
    ("concat", 128): 33.0,
    ("add", 256): 33.5,
    ("add", 128): 32.5,
}
BASELINE = dict(part_masks="stripes", channel_attention="none", part_aware_attention=False)


def parameter_count(**overrides) -> int:
    with torch.device("meta"):  # shapes only, nothing allocated
        model = PANModel(PANConfig(num_identities=751, **overrides))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fusion, pam_dim", list(TABLE_2))
def test_default_model_has_the_paper_parameter_count(fusion, pam_dim):
    millions = parameter_count(fusion=fusion, pam_dim=pam_dim) / 1e6
    assert millions == pytest.approx(TABLE_2[fusion, pam_dim], abs=0.2)


def test_part_feature_learning_fits_the_paper_budget_and_the_old_layout_is_reachable():
    def plm(**overrides):
        with torch.device("meta"):
            module = PartFeatureLearning(PANConfig(**overrides))
        return sum(p.numel() for p in module.parameters())

    # 3 x (2048*8 + BN 16 + 8*k + BN 2k) + one gate 2048*8 + 8 + 8*2048 + 2048
    assert plm() == 3 * (2048 * 8 + 16) + 10 * 6 + (2048 * 8 + 8 + 8 * 2048 + 2048) == 84084
    # The earlier layout: 256-wide spatial branches and an SE gate (reduction 16) per scale.
    assert plm(spatial_hidden_size=256, channel_attention="per_scale", channel_reduction=16) \
        == 3 * (2048 * 256 + 512) + 258 * 6 + 3 * (2048 * 128 + 128 + 128 * 2048 + 2048)


def test_table_2_baseline_is_stripes_without_plm_gates_or_pam():
    # Six stripe parts, each Linear(2048 -> 256)-BN and a BNNeck classifier on the trunk.
    assert parameter_count(**BASELINE) / 1e6 == pytest.approx(27.8, abs=0.05)


def test_default_loss_is_plain_cross_entropy():
    assert PANConfig().label_smoothing == 0.0
    model = tiny_model().train()
    x, y = torch.randn(8, 3, 64, 32), torch.arange(8) % 4
    out = model(x, labels=y, output_part_masks=True)
    identity = sum(F.cross_entropy(h, y) for h in out.logits)
    from reid_transformers.losses import batch_hard_triplet_loss

    expected = identity + batch_hard_triplet_loss(out.features[0], y, 0.3) \
        + 1e-3 * orthogonality_loss(out.part_masks)
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- ablations
def train_step(model, batch: int = 8):
    """One backward pass; every trainable weight must get a real gradient (no dead weights),
    and the model must then embed a batch of one image in eval mode."""
    model.train()
    x, y = torch.randn(batch, 3, 64, 32), torch.arange(batch) % 4
    out = model(x, labels=y, output_part_masks=True, output_hidden_states=True)
    out.loss.backward()
    # Float round-off leaves ~1e-10 on a weight whose true gradient is 0 (a bias before a
    # BatchNorm), so "a gradient" means one above that.
    assert not dead_parameters(model, tolerance=1e-8)
    single = model.eval()(torch.randn(1, 3, 64, 32))
    parts = model.config.num_parts
    assert single.embeddings.shape == (1, parts * model.config.embedding_size)
    assert len(single.logits) == parts and torch.isfinite(single.embeddings).all()
    return x, y, out


def test_stripes_parts_are_band_means_of_the_gated_map():
    model = tiny_model(part_masks="stripes")
    assert model.part_learning.spatial is None
    x4 = torch.randn(2, 2048, 5, 2)  # 5 rows: bands of 3 overlap by a row, as adaptive pooling
    parts, masks = model.part_learning(x4)
    gated = x4 * model.part_learning.channel_attention[0](x4)[:, :, None, None]
    expected = torch.cat(
        [F.adaptive_avg_pool2d(gated, (k, 1)).flatten(2).transpose(1, 2) for k in (1, 2, 3)], 1
    )
    torch.testing.assert_close(parts, expected)
    torch.testing.assert_close(parts[:, 1], gated[:, :, 0:3].mean((2, 3)))  # scale 2, top band
    assert [m.shape for m in masks] == [(2, k, 5, 2) for k in (1, 2, 3)]
    assert masks[1][0, :, :, 0].tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    # A training step: no orthogonality term (fixed stripes), every weight learns.
    x, y, out = train_step(model)
    from reid_transformers.losses import batch_hard_triplet_loss

    expected_loss = sum(F.cross_entropy(h, y) for h in out.logits) \
        + batch_hard_triplet_loss(out.features[0], y, 0.3)
    torch.testing.assert_close(out.loss, expected_loss)


def test_global_pooling_baseline_embeds_the_average_pooled_map():
    model = tiny_model(part_scales=(1,), **BASELINE)
    assert len(model.part_learning.channel_attention) == 0 and model.part_attention is None
    x, _, out = train_step(model)
    model.eval()
    out = model(x, output_hidden_states=True)
    gap = out.hidden_states[-1].mean((2, 3))  # (B, 2048)
    torch.testing.assert_close(
        out.embeddings, F.normalize(model.part_embedding[0](gap), dim=-1)
    )
    assert out.embeddings.shape == (8, 16) and len(out.logits) == 1


def test_without_part_aware_attention_parts_come_straight_from_the_plm():
    model = tiny_model(part_aware_attention=False)
    assert model.part_attention is None
    assert all(embed[0].in_features == 2048 for embed in model.part_embedding)
    train_step(model)
    model.eval()
    out = model(torch.randn(2, 3, 64, 32), output_hidden_states=True)
    parts, _ = model.part_learning(out.hidden_states[-1])
    expected = torch.cat([embed(parts[:, j]) for j, embed in enumerate(model.part_embedding)], 1)
    torch.testing.assert_close(out.embeddings, F.normalize(expected, dim=-1))


def test_per_level_pam_dim():
    config = TestPAN().tiny_config(pam_dim=[4, 8, 12])  # a JSON list becomes a tuple
    assert config.pam_dim == (4, 8, 12) and config.pam_dims == (4, 8, 12)
    assert PANConfig.from_dict(config.to_dict()).pam_dim == (4, 8, 12)
    assert TestPAN().tiny_config().pam_dims == (8, 8, 8)
    model = tiny_model(pam_dim=(4, 8, 12))
    assert [(p.phi.out_features, p.psi.out_channels) for p in model.part_attention] == [
        (4, 4), (8, 8), (12, 12)
    ]
    pam = model.part_attention[2]
    parts, level = torch.randn(2, 6, 2048), torch.randn(2, 1024, 4, 2)
    phi = pam.phi(parts)  # (B, P, 12)
    psi = pam.psi(level).flatten(2)  # (B, 12, N)
    f = pam.f(level).flatten(2)  # (B, 1024, N)
    torch.testing.assert_close(
        pam(parts, level), phi @ psi @ f.transpose(1, 2) / 8, atol=1e-4, rtol=1e-4
    )
    train_step(model)


def test_channel_attention_is_shared_per_scale_or_absent():
    torch.manual_seed(0)
    x4 = torch.randn(2, 2048, 4, 2)
    for layout, gates in (("shared", 1), ("per_scale", 3), ("none", 0)):
        module = PartFeatureLearning(PANConfig(**TINY, channel_attention=layout)).eval()
        assert len(module.channel_attention) == gates
        parts, masks = module(x4)
        # P_j = mean_hw(c * s_j * X4), c the scale's gate (or 1 without one).
        expected = []
        for index, mask in enumerate(masks):
            gate = module.channel_attention[index if gates > 1 else 0](x4) if gates else 1.0
            gated = x4 * (gate[:, :, None, None] if gates else gate)
            expected.append(torch.einsum("bkhw,bchw->bkc", mask, gated) / 8)
        torch.testing.assert_close(parts, torch.cat(expected, 1))


def test_learned_masks_are_one_conv_bn_relu_branch_per_scale():
    torch.manual_seed(0)
    spatial = PartFeatureLearning(PANConfig(**TINY)).spatial.train()
    spatial(torch.randn(4, 2048, 4, 2))  # BatchNorm running statistics away from 0 / 1
    spatial.eval()
    x4 = torch.randn(2, 2048, 4, 2)
    conv, norm, _ = spatial.hidden
    hidden = 16  # TINY's spatial_hidden_size
    for index, (head, mask) in enumerate(zip(spatial.heads, spatial(x4), strict=True)):
        rows = slice(index * hidden, (index + 1) * hidden)  # this scale's own branch
        z = F.batch_norm(F.conv2d(x4, conv.weight[rows]), norm.running_mean[rows],
                         norm.running_var[rows], norm.weight[rows], norm.bias[rows])
        torch.testing.assert_close(mask, head(F.relu(z)))
        assert mask.shape == (2, (1, 2, 3)[index], 4, 2) and mask.min() >= 0


# The ablations without a test of their own above.
ABLATIONS = {
    "default": {},
    "add": {"fusion": "add"},
    "table_2_baseline": BASELINE,
    "no_pam_add": {"part_aware_attention": False, "fusion": "add"},
    "per_scale_gates": {"channel_attention": "per_scale"},
    "no_gate": {"channel_attention": "none"},
}


@pytest.mark.parametrize("overrides", ABLATIONS.values(), ids=ABLATIONS.keys())
def test_every_weight_learns_and_batch_size_one_works(overrides):
    train_step(tiny_model(**overrides))


def test_model_card_sizes_come_from_the_config():
    from reid_transformers.hub import render_model_card

    config = TestPAN().tiny_config(part_scales=(1, 3), embedding_size=32)
    text = str(render_model_card(config, model_name="pan-test"))
    assert "`(batch, 128)`: the embeddings of the 4 parts (32-d each)" in text
    assert "scales `(1, 3)` (4 parts in all)" in text
    assert "`(batch, 1536)`" in str(render_model_card(PANConfig(), model_name="pan-test"))
