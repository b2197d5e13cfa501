"""PAN: Part-aware Attention Network for person re-identification.

A ResNet trunk (ResNet-50 by default); part features are pooled from the last feature map
under learned spatial masks (several granularities; fixed horizontal stripes as an
ablation) and a channel attention, then each part attends to the outputs of stages 1-3
(part-aware attention, PAM); the fused part vectors are embedded and classified per part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import BNNeck, ResNetReIDPreTrainedModel
from .configuration_pan import PANConfig


@dataclass
class PANModelOutput(ReIDModelOutput):
    """:class:`ReIDModelOutput` plus, when requested, the spatial part masks.

    Attributes:
        part_masks: one ``(B, parts_of_scale, h, w)`` tensor per scale (non-negative): the
            learned masks, or the 0/1 stripes with ``part_masks="stripes"``.
    """

    part_masks: tuple[torch.FloatTensor, ...] | None = None


def orthogonality_loss(masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over scales of ``|| M M^T - I ||_F`` (Frobenius, not squared), batch-averaged,
    where ``M`` holds one flattened ``(h * w)`` mask per row.

    Args:
        masks: per scale, ``(B, k, h, w)``.
    """
    terms = []
    for mask in masks:
        flat = mask.flatten(2)  # (B, k, h*w)
        gram = flat @ flat.transpose(1, 2)  # (B, k, k)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro").mean())
    return torch.stack(terms).mean()


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate: ``sigmoid(FC(ReLU(FC(GAP(X)))))``, one weight per
    channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.squeeze = nn.Linear(channels, squeezed)
        self.excite = nn.Linear(squeezed, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> gate ``(B, C)`` in ``(0, 1)``."""
        return torch.sigmoid(self.excite(F.relu(self.squeeze(features.mean((2, 3))))))


class SpatialMasks(nn.Module):
    """The learned spatial masks of every scale: for scale ``k``, ``k`` non-negative masks from
    ``Conv1x1(C -> hidden)-BN-ReLU-Conv1x1(hidden -> k)-BN-ReLU``.

    The scales' first convolutions (and BatchNorms, which act per channel) are stored as one
    ``C -> scales * hidden`` layer: the same function as separate branches, but the large map
    is read once instead of once per scale.
    """

    def __init__(self, channels: int, hidden: int, part_scales: tuple[int, ...]) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.hidden = nn.Sequential(
            nn.Conv2d(channels, hidden * len(part_scales), 1, bias=False),
            nn.BatchNorm2d(hidden * len(part_scales)),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, k, 1, bias=False), nn.BatchNorm2d(k), nn.ReLU())
            for k in part_scales
        )

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, h, w)`` -> per scale ``(B, k, h, w)``."""
        hidden = self.hidden(features).split(self.hidden_size, dim=1)  # per scale (B, hidden, h, w)
        return [head(z) for head, z in zip(self.heads, hidden, strict=True)]


def stripe_masks(
    num_parts: int,
    height: int,
    width: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(num_parts, height, width)`` 0/1 masks of horizontal bands, top to bottom.

    Band ``j`` covers rows ``floor(j * height / k)`` to ``ceil((j + 1) * height / k)`` (the
    bins of adaptive average pooling), so a band mean equals
    ``F.adaptive_avg_pool2d(x, (k, 1))`` and bands overlap by a row when ``k`` does not
    divide ``height``.
    """
    rows = torch.arange(height, device=device)
    j = torch.arange(num_parts, device=device)[:, None]
    first = (j * height) // num_parts
    end = -((-(j + 1) * height) // num_parts)  # ceil((j + 1) * height / k)
    bands = (rows >= first) & (rows < end)  # (k, height)
    return bands[:, :, None].expand(num_parts, height, width).to(dtype)


class PartFeatureLearning(nn.Module):
    """The part-feature learning module (PLM) over the stage-4 map ``X4``, all scales.

    For scale ``k``: masks ``s_1..s_k`` (learned by `SpatialMasks`, or fixed `stripe_masks`)
    and the channel gate ``c`` (`ChannelAttention`: shared by the scales, one per scale, or
    none) give the part vectors ``P_j = mean_hw(c * s_j * X4)`` for learned masks and the
    band means of ``c * X4`` for stripes.
    """

    def __init__(self, config: PANConfig) -> None:
        super().__init__()
        channels = config.stage_channels[-1]
        self.part_scales = config.part_scales
        self.spatial = (
            SpatialMasks(channels, config.spatial_hidden_size, config.part_scales)
            if config.part_masks == "learned"
            else None
        )
        num_gates = {"shared": 1, "per_scale": len(config.part_scales), "none": 0}
        self.channel_attention = nn.ModuleList(
            ChannelAttention(channels, config.channel_reduction)
            for _ in range(num_gates[config.channel_attention])
        )

    def forward(self, x4: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(B, 2048, h, w)`` -> (parts ``(B, P, 2048)``, masks: per scale ``(B, k, h, w)``)."""
        batch, _, height, width = x4.shape
        if self.spatial is not None:
            masks = self.spatial(x4)  # per scale (B, k, h, w), non-negative
            weights = [mask / (height * width) for mask in masks]
        else:
            masks, weights = [], []
            for k in self.part_scales:
                bands = stripe_masks(k, height, width, device=x4.device, dtype=x4.dtype)
                masks.append(bands.expand(batch, -1, -1, -1))
                weights.append(masks[-1] / bands.sum((1, 2))[None, :, None, None])
        parts = torch.einsum("bphw,bchw->bpc", torch.cat(weights, 1), x4)  # (B, P, 2048)
        if len(self.channel_attention):
            # The gate is constant over positions, so mean_hw(c * s_j * X4) equals
            # c * mean_hw(s_j * X4): gating the P pooled vectors, not the whole map, is cheaper.
            gates = [gate(x4) for gate in self.channel_attention]  # one, or one per scale
            per_part = [
                gates[index if len(gates) > 1 else 0][:, None].expand(-1, k, -1)
                for index, k in enumerate(self.part_scales)
            ]
            parts = parts * torch.cat(per_part, 1)
        return parts, tuple(masks)


class PartAwareAttention(nn.Module):
    """PAM for one trunk level: ``Z = phi(P) psi(X)^T f(X) / N`` (no softmax).

    ``phi``: parts ``part_channels -> dim``; ``psi``: ``C_l -> dim``; ``f``:
    ``C_l -> out_channels`` (``C_l`` for concatenation fusion, 2048 for additive fusion); all
    with bias.
    """

    def __init__(
        self, in_channels: int, part_channels: int, dim: int, out_channels: int
    ) -> None:
        super().__init__()
        self.phi = nn.Linear(part_channels, dim)
        self.psi = nn.Conv2d(in_channels, dim, 1)
        self.f = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, parts: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """parts ``(B, P, 2048)``, level ``(B, C_l, h, w)`` -> ``(B, P, C_out)``."""
        # psi and f are linear, so they are applied on the P part side instead of at every
        # one of the N positions: (phi(P) W_psi) X costs P*C*N rather than D*C*N, and
        # ((phi(P) psi(X)) X^T) W_f^T costs P*N*C + P*C*C_out rather than C_out*C*N.
        x = level.flatten(2)  # (B, C_l, N)
        queries = self.phi(parts)  # (B, P, D)
        psi_weight, f_weight = self.psi.weight.flatten(1), self.f.weight.flatten(1)
        affinity = (queries @ psi_weight) @ x + (queries @ self.psi.bias).unsqueeze(-1)
        pooled = affinity @ x.transpose(1, 2)  # (B, P, C_l)
        out = pooled @ f_weight.T + affinity.sum(-1, keepdim=True) * self.f.bias
        return out / x.shape[-1]  # (B, P, C_out)


class PANPreTrainedModel(ResNetReIDPreTrainedModel):
    config_class = PANConfig
    base_model_prefix = "pan"


class PANModel(PANPreTrainedModel):
    """PAN: ResNet trunk, part-feature learning (PLM), part-aware attention (PAM), one
    embedding and BNNeck classifier per part.

    - ``embeddings`` ``(B, P * embedding_size)``: the part embeddings, concatenated and
      L2-normalised (1536-d by default).
    - ``logits``: ``P`` tensors ``(B, num_identities)``, one BNNeck classifier per part.
    - ``loss``: sum of the per-part cross-entropies (``label_smoothing``, 0 by default)
      ``+ triplet_weight * triplet(concatenated embeddings)
      + orthogonal_weight * orthogonality_loss(masks)`` (the last term with learned masks
      only: fixed stripes have nothing to regularise).
    - ``features``: the concatenated part embeddings (what the triplet uses).
    - ``part_masks`` with ``output_part_masks=True``: per scale ``(B, k, h, w)``, the learned
      masks or the 0/1 stripes.
    """

    def __init__(self, config: PANConfig) -> None:
        super().__init__(config)
        self.part_learning = PartFeatureLearning(config)
        part_channels, level_channels = config.stage_channels[-1], config.stage_channels[:3]
        self.part_attention = None
        fused = part_channels  # no PAM, or additive fusion: (B, P, 2048)
        if config.part_aware_attention:
            concat = config.fusion == "concat"
            self.part_attention = nn.ModuleList(
                PartAwareAttention(c, part_channels, dim, c if concat else part_channels)
                for c, dim in zip(level_channels, config.pam_dims, strict=True)
            )
            if concat:
                fused += sum(level_channels)  # [P; Z1; Z2; Z3]: (B, P, 3840)
        # Bias-free: the BatchNorm right after removes any constant shift, so a bias would
        # get no gradient in training.
        self.part_embedding = nn.ModuleList(
            nn.Sequential(
                nn.Linear(fused, config.embedding_size, bias=False),
                nn.BatchNorm1d(config.embedding_size),
                nn.ReLU(),
            )
            for _ in range(config.num_parts)
        )
        self.necks = nn.ModuleList(
            BNNeck(config.embedding_size, config.num_identities) for _ in range(config.num_parts)
        )
        self.post_init()

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool,
        output_part_masks: bool = False, **kwargs,
    ) -> PANModelOutput:
        """``output_attentions`` is ignored: PAN has no attention weights."""
        config = self.config
        stages = self.resnet(pixel_values)  # X1..X4
        parts, masks = self.part_learning(stages[-1])  # (B, P, 2048), per scale (B, k, h, w)
        fused = parts
        if self.part_attention is not None:
            attended = [
                pam(parts, level)
                for pam, level in zip(self.part_attention, stages[:3], strict=True)
            ]
            if config.fusion == "concat":
                fused = torch.cat([parts, *attended], dim=-1)  # (B, P, 3840)
            else:
                fused = parts + sum(attended)  # (B, P, 2048)
        part_embeddings = torch.stack(
            [embed(fused[:, j]) for j, embed in enumerate(self.part_embedding)], dim=1
        )  # (B, P, E)
        concatenated = part_embeddings.flatten(1)
        embeddings = F.normalize(concatenated, dim=-1)
        logits = (
            tuple(neck(part_embeddings[:, j])[1] for j, neck in enumerate(self.necks))
            if config.num_identities
            else None
        )

        loss = None
        if labels is not None:
            identity = sum(
                cross_entropy_with_label_smoothing(h, labels, config.label_smoothing)
                for h in logits
            )
            triplet = batch_hard_triplet_loss(concatenated, labels, config.triplet_margin)
            loss = identity + config.triplet_weight * triplet
            if config.part_masks == "learned":
                loss = loss + config.orthogonal_weight * orthogonality_loss(masks)

        return PANModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=(concatenated,),
            hidden_states=stages if output_hidden_states else None,
            part_masks=masks if output_part_masks else None,
        )
