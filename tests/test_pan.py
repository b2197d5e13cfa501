from __future__ import annotations

import pytest
import torch

from reid_transformers.models.pan import (  # noqa: I001
    PANConfig,
    PANImageProcessor,
    PANModel,
    orthogonality_loss,
)

from .reid_model_tests import ReIDModelTests

TINY = dict(
    image_size=(64, 32), num_identities=5, spatial_hidden_size=16, pam_dim=8,
    embedding_size=16, channel_reduction=64, frozen_batch_norm=True,
)


class TestPAN(ReIDModelTests):
    model_class = PANModel
    processor_class = PANImageProcessor
    alternative_image_size = (96, 32)

    def tiny_config(self, **overrides):
        overrides.pop("attn_implementation", None)  # no attention in PAN
        return PANConfig(**{**TINY, **overrides})


def tiny_model(**overrides):
    torch.manual_seed(0)
    return PANModel(TestPAN().tiny_config(**overrides)).eval()


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
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
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

    model = tiny_model().train()
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
