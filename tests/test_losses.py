from __future__ import annotations

import math

import pytest
import torch

from reid_transformers.losses import (
    batch_hard_triplet_loss,
    cross_entropy_with_label_smoothing,
    pairwise_euclidean,
)


def test_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    eps = 0.1
    log_p = logits.log_softmax(-1)
    expected = 0.0
    for i, y in enumerate(labels.tolist()):
        target = torch.full((3,), eps / 3)
        target[y] += 1 - eps
        expected += -(target * log_p[i]).sum() / 2
    assert cross_entropy_with_label_smoothing(logits, labels, eps) == pytest.approx(float(expected))
    plain = cross_entropy_with_label_smoothing(logits, labels, 0.0)
    assert plain == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_label_smoothing_rejects_bad_input():
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_with_label_smoothing(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        cross_entropy_with_label_smoothing(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected logits"):
        cross_entropy_with_label_smoothing(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_batch_hard_triplet_matches_hand_computation():
    # Points on a line: ids 0 at 0 and 1; id 1 at 3 and 7.
    features = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor: hardest positive, hardest negative
    # 0: d_ap 1, d_an 3 | 1: 1, 2 | 2: 4, 2 | 3: 4, 6
    gaps = torch.tensor([1 - 3, 1 - 2, 4 - 2, 4 - 6], dtype=torch.float)
    expected = torch.relu(gaps + 0.3).mean()
    hard = batch_hard_triplet_loss(features, labels, 0.3)
    assert float(hard) == pytest.approx(float(expected), abs=1e-5)
    soft = torch.nn.functional.softplus(gaps).mean()
    assert batch_hard_triplet_loss(features, labels, None) == pytest.approx(float(soft), abs=1e-5)


def test_triplet_skips_anchors_without_positive_and_has_gradient():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])  # anchor 2 has no positive: left out
    loss = batch_hard_triplet_loss(features, labels, margin=10.0)
    assert float(loss.detach()) == pytest.approx(((1 - 5 + 10) + (1 - 4 + 10)) / 2, abs=1e-4)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    lonely = batch_hard_triplet_loss(features, torch.tensor([0, 1, 2]))
    assert float(lonely) == 0.0 and lonely.requires_grad


def test_pairwise_euclidean_gradient_is_finite_on_duplicates():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)
    dist = pairwise_euclidean(x)
    assert float(dist[0, 2]) == pytest.approx(5.0, abs=1e-5)
    dist.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert math.isclose(float(dist[0, 1]), 1e-6, abs_tol=1e-5)


def test_triplet_rejects_bad_input():
    with pytest.raises(ValueError, match="margin must be positive"):
        batch_hard_triplet_loss(torch.zeros(2, 3), torch.tensor([0, 1]), margin=0.0)
    with pytest.raises(ValueError, match="expected features"):
        batch_hard_triplet_loss(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
