"""PAN: Part-aware Attention Network for person re-identification.

A ResNet-50 trunk; part features are pooled from the last feature map under learned spatial
masks (several granularities) and channel attention, then each part attends to the outputs
of stages 1-3 (part-aware attention, PAM); the fused part vectors are embedded and
classified per part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import (
    RESNET50_STAGE_CHANNELS,
    ResNetBackbone,
)
from ...losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import BNNeck, ResNetReIDPreTrainedModel
from .configuration_pan import PANConfig


@dataclass
class PANModelOutput(ReIDModelOutput):
    """:class:`ReIDModelOutput` plus, when requested, the spatial part masks.

    Attributes:
        part_masks: one ``(B, parts_of_scale, h, w)`` tensor per scale (non-negative).
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


class PartFeatureLearning(nn.Module):
    """One scale of the part-feature learning module (PLM): ``k`` spatial masks and an SE
    channel attention over the stage-4 map; ``P_j = mean_hw(c * s_j * X4)``."""

    def __init__(self, config: PANConfig, num_parts: int) -> None:
        super().__init__()
        channels, hidden = RESNET50_STAGE_CHANNELS[-1], config.spatial_hidden_size
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, num_parts, 1, bias=False),
            nn.BatchNorm2d(num_parts),
            nn.ReLU(),
        )
        squeezed = max(1, channels // config.channel_reduction)
        self.channel = nn.Sequential(
            nn.Linear(channels, squeezed), nn.ReLU(), nn.Linear(squeezed, channels), nn.Sigmoid()
        )

    def forward(self, x4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2048, h, w)`` -> (parts ``(B, k, 2048)``, masks ``(B, k, h, w)``)."""
        masks = self.spatial(x4)  # (B, k, h, w), non-negative
        gate = self.channel(x4.mean((2, 3)))  # (B, 2048)
        gated = x4 * gate[:, :, None, None]
        parts = torch.einsum("bkhw,bchw->bkc", masks, gated) / masks[0, 0].numel()
        return parts, masks


class PartAwareAttention(nn.Module):
    """PAM for one trunk level: ``Z = phi(P) psi(X)^T f(X) / N`` (no softmax).

    ``phi``: parts ``2048 -> D``; ``psi``: ``C_l -> D``; ``f``: ``C_l -> C_out`` (``C_l`` for
    concatenation fusion, 2048 for additive fusion); all with bias.
    """

    def __init__(self, config: PANConfig, in_channels: int) -> None:
        super().__init__()
        out_channels = in_channels if config.fusion == "concat" else RESNET50_STAGE_CHANNELS[-1]
        self.phi = nn.Linear(RESNET50_STAGE_CHANNELS[-1], config.pam_dim)
        self.psi = nn.Conv2d(in_channels, config.pam_dim, 1)
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
    """PAN (ARCHITECTURES.md section 3).

    - ``embeddings`` ``(B, P * embedding_size)``: the part embeddings, concatenated and
      L2-normalised (1536-d by default).
    - ``logits``: ``P`` tensors ``(B, num_identities)``, one BNNeck classifier per part.
    - ``loss``: sum of the per-part label-smoothed cross-entropies
      ``+ triplet_weight * triplet(concatenated embeddings)
      + orthogonal_weight * orthogonality_loss(masks)``.
    - ``features``: the concatenated part embeddings (what the triplet uses).
    - ``part_masks`` with ``output_part_masks=True``.
    """

    def __init__(self, config: PANConfig) -> None:
        super().__init__(config)
        self.resnet = ResNetBackbone(config)
        self.part_learning = nn.ModuleList(
            PartFeatureLearning(config, k) for k in config.part_scales
        )
        self.part_attention = nn.ModuleList(
            PartAwareAttention(config, c) for c in RESNET50_STAGE_CHANNELS[:3]
        )
        fused = (
            RESNET50_STAGE_CHANNELS[-1] + sum(RESNET50_STAGE_CHANNELS[:3])
            if config.fusion == "concat"
            else RESNET50_STAGE_CHANNELS[-1]
        )
        self.part_embedding = nn.ModuleList(
            nn.Sequential(
                nn.Linear(fused, config.embedding_size),
                nn.BatchNorm1d(config.embedding_size),
                nn.ReLU(),
            )
            for _ in range(config.num_parts)
        )
        self.necks = nn.ModuleList(
            BNNeck(config.embedding_size, config.num_identities) for _ in range(config.num_parts)
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_part_masks: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PANModelOutput | tuple:
        config = self.config
        return_dict, output_hidden_states, _ = self._resolve_output_flags(
            return_dict, output_hidden_states, False
        )
        self._check_labels(labels, pixel_values.shape[0])
        stages = self.resnet(pixel_values)  # X1..X4
        learned = [module(stages[-1]) for module in self.part_learning]
        parts = torch.cat([p for p, _ in learned], dim=1)  # (B, P, 2048)
        masks = tuple(m for _, m in learned)
        attended = [
            pam(parts, level) for pam, level in zip(self.part_attention, stages[:3], strict=True)
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
            loss = (
                identity
                + config.triplet_weight * triplet
                + config.orthogonal_weight * orthogonality_loss(masks)
            )

        output = PANModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=(concatenated,),
            hidden_states=stages if output_hidden_states else None,
            part_masks=masks if output_part_masks else None,
        )
        return output if return_dict else output.to_tuple()
