"""Losses of re-ID training: identity classification and metric learning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_with_label_smoothing(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1
) -> torch.Tensor:
    """Cross-entropy against targets ``(1 - eps) * one_hot + eps / C``, averaged over the batch.

    Args:
        logits: ``(B, C)`` unnormalised scores.
        labels: ``(B,)`` identity indices in ``[0, C)``.
        epsilon: smoothing in ``[0, 1)``; 0 is plain cross-entropy.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    num_classes = logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}) for {num_classes} identities, got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """``(B, d)`` -> ``(B, B)`` Euclidean distances with a gradient that is finite at 0."""
    squared = features.pow(2).sum(1)
    dist = squared[:, None] + squared[None, :] - 2 * features @ features.T
    # sqrt has an infinite derivative at 0 (the diagonal); clamping keeps it finite.
    return dist.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(
    features: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017).

    For each anchor, its farthest positive and closest negative in the batch (Euclidean
    distance of ``features``) form the triplet: ``max(0, d_ap - d_an + margin)``, or the
    soft margin ``log(1 + exp(d_ap - d_an))`` when ``margin`` is ``None``. Anchors without a
    positive or a negative in the batch are left out; a batch without any usable anchor gives
    a zero loss that still carries a gradient path.

    Args:
        features: ``(B, d)`` embeddings (typically before the BNNeck).
        labels: ``(B,)`` identity labels.
        margin: positive margin, or ``None`` for the soft margin.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (B, d) and labels (B,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if margin is not None and margin <= 0:
        raise ValueError(f"margin must be positive or None (soft margin), got {margin}")
    dist = pairwise_euclidean(features.float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    usable = positive.any(1) & negative.any(1)
    if not usable.any():
        return features.sum() * 0.0
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)[usable]
    hardest_negative = dist.masked_fill(~negative, float("inf")).amin(1)[usable]
    gap = hardest_positive - hardest_negative
    if margin is None:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()
