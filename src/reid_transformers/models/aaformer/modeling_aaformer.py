"""AAformer: Auto-Aligned Transformer for person re-identification.

Zhu et al., "AAformer: Auto-Aligned Transformer for Person
Re-Identification", IEEE TNNLS 2023 (arXiv:2104.00921). Learnable [PART] tokens join the
ViT's [CLS] and patch tokens; in every layer each head assigns every patch to one part of
each granularity group by optimal transport (Multi-head Auto-Alignment), and a part token
attends only to its patches. The paper's ablations are config switches: nearest-part
assignment, fixed horizontal stripes, and unaligned part tokens ("6 x CLS").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import BNNeck, ViTReIDPreTrainedModel
from .configuration_aaformer import AAformerConfig
from .optimal_transport import ASSIGNMENT_METHODS, assign_patches, assignment_mask


@dataclass
class AAformerModelOutput(ReIDModelOutput):
    """:class:`ReIDModelOutput` plus, when requested, the patch-to-part assignments.

    Attributes:
        part_assignments: one ``(B, heads, num_groups, N)`` tensor per layer: for every
            granularity group, the part (an index over all parts, ``0..num_parts - 1``) that
            each of the ``N`` patches was assigned to by that layer's head. With
            ``assignment="stripes"`` every layer, head and image holds the same stripes.
    """

    part_assignments: tuple[torch.LongTensor, ...] | None = None


def token_attention_mask(
    config: AAformerConfig, num_tokens: int, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """The part of the additive attention mask that does not depend on the image, ``(T, T)``.

    Token order is ``[CLS, PART_1..PART_P, patch_1..patch_N]``. [CLS] and patch queries see
    [CLS] and the patches, and the [PART] tokens only with ``parts_visible_to_all``. [PART]
    query rows see every token with ``assignment="none"`` and nothing otherwise: the
    assignment then opens each part's patches.
    """
    first_patch = 1 + config.num_parts
    mask = torch.zeros(num_tokens, num_tokens, dtype=dtype, device=device)
    if not config.parts_visible_to_all:
        mask[:, 1:first_patch] = float("-inf")
    mask[1:first_patch] = 0.0 if config.assignment == "none" else float("-inf")
    return mask


def stripe_assignments(
    grid: tuple[int, int], num_parts: int, device: torch.device | None = None
) -> torch.Tensor:
    """Fixed PCB-style assignment: the patch rows cut into ``num_parts`` horizontal stripes.

    Row ``r`` of ``R`` goes to part ``floor(r * num_parts / R)``, so the stripes are
    contiguous and differ by at most one row. Returns the part ``0..num_parts - 1`` of every
    patch of the row-major ``(rows, cols)`` grid, ``(rows * cols,)`` int64.
    """
    rows, cols = grid
    if rows < num_parts:
        raise ValueError(
            f"cannot cut {rows} patch rows into {num_parts} horizontal stripes; use an input "
            f"with at least {num_parts} patch rows"
        )
    row_parts = torch.arange(rows, device=device) * num_parts // rows  # (R,)
    return row_parts.repeat_interleave(cols)


class AutoAlignmentMask:
    """Builds one layer's attention mask from its queries and keys (Multi-head Auto-Alignment).

    Starts from :func:`token_attention_mask`; each [PART] query then sees only the patches
    assigned to it: per image, head and granularity group, part-to-patch scores
    ``q_part . k_patch`` go through :func:`assign_patches` (``"optimal_transport"`` or
    ``"nearest"``).
    """

    def __init__(self, config: AAformerConfig, record: list[torch.Tensor] | None) -> None:
        self.config = config
        self.granularities = config.part_granularities
        self.num_parts = config.num_parts
        self.method = config.assignment
        self.epsilon = config.ot_epsilon
        self.iterations = config.ot_iterations
        self.record = record

    def __call__(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        batch, heads, tokens, _ = query.shape
        first_patch = 1 + self.num_parts
        base = token_attention_mask(self.config, tokens, query.dtype, query.device)
        mask = base.expand(batch, heads, tokens, tokens).clone()  # (B, h, T, T), additive
        assignments = []
        with torch.no_grad():
            patch_keys = key[:, :, first_patch:]  # (B, h, N, hd)
            start = 1
            for offset, size in zip(_group_offsets(self.granularities), self.granularities,
                                    strict=True):
                part_queries = query[:, :, start : start + size]  # (B, h, P_g, hd)
                scores = part_queries @ patch_keys.transpose(-1, -2)  # (B, h, P_g, N)
                assigned = assign_patches(
                    scores, method=self.method, epsilon=self.epsilon, iterations=self.iterations
                )  # (B, h, N)
                mask[:, :, start : start + size, first_patch:] = assignment_mask(
                    assigned, size, mask.dtype
                )
                assignments.append(assigned + offset)
                start += size
        if self.record is not None:
            self.record.append(torch.stack(assignments, dim=2))  # (B, h, groups, N)
        return mask


def _group_offsets(granularities: tuple[int, ...]) -> list[int]:
    """Index of each granularity group's first part among all parts: (2, 3) -> [0, 2]."""
    offsets, total = [], 0
    for size in granularities:
        offsets.append(total)
        total += size
    return offsets


class AAformerPreTrainedModel(ViTReIDPreTrainedModel):
    config_class = AAformerConfig
    base_model_prefix = "aaformer"


class AAformerModel(AAformerPreTrainedModel):
    """AAformer.

    Input ``pixel_values`` ``(B, 3, H, W)``; ``P = sum(part_granularities)`` part tokens.

    - ``embeddings`` ``(B, (1 + P) * D)``: [CLS] and part outputs, before the BNNecks,
      concatenated and L2-normalised.
    - ``logits``: ``1 + P`` tensors ``(B, num_identities)`` ([CLS] first), one BNNeck head
      each (heads are not shared).
    - ``loss``: mean over the ``1 + P`` heads of label-smoothed cross-entropy, plus
      ``triplet_weight * (triplet(CLS) + triplet(concatenated parts))``.
    - ``features``: ([CLS] feature, concatenated part features), what the triplets use.
    - ``part_assignments`` with ``output_part_assignments=True`` (not with
      ``assignment="none"``, which assigns nothing).
    """

    def __init__(self, config: AAformerConfig) -> None:
        super().__init__(config)
        self.part_tokens = nn.Parameter(torch.zeros(1, config.num_parts, config.hidden_size))
        self.necks = nn.ModuleList(
            BNNeck(config.hidden_size, config.num_identities) for _ in range(1 + config.num_parts)
        )
        self.post_init()

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool,
        output_part_assignments: bool = False, **kwargs,
    ) -> AAformerModelOutput:
        config = self.config
        if output_part_assignments and config.assignment == "none":
            raise ValueError(
                "output_part_assignments=True needs an assignment of patches to parts; with "
                "assignment='none' every part token attends to every token"
            )
        tokens = self.vit.embeddings(pixel_values)  # (B, 1 + N, D), positions added
        parts = self.part_tokens.expand(len(tokens), -1, -1).to(tokens.dtype)
        hidden = torch.cat([tokens[:, :1], parts, tokens[:, 1:]], dim=1)  # (B, 1 + P + N, D)

        record: list[torch.Tensor] | None = [] if output_part_assignments else None
        stripes = None
        if config.assignment in ASSIGNMENT_METHODS:
            mask = AutoAlignmentMask(config, record)
        else:
            grid = self.vit.embeddings.grid_size(*pixel_values.shape[-2:])
            mask, stripes = self._fixed_alignment(grid, hidden.shape[1], hidden.dtype,
                                                  hidden.device)
        all_hidden = [hidden] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.vit.encoder.layers:
            hidden, weights = layer(hidden, mask, output_attentions)
            if all_hidden is not None:
                all_hidden.append(hidden)
            if all_attentions is not None:
                all_attentions.append(weights)
        hidden = self.vit.layernorm(hidden)
        if record is not None and stripes is not None:
            batch_stripes = stripes.expand(len(hidden), config.num_attention_heads, -1, -1)
            record.extend([batch_stripes] * len(self.vit.encoder.layers))

        num_tokens = 1 + config.num_parts
        features = hidden[:, :num_tokens]  # (B, 1 + P, D): [CLS], parts
        embeddings = F.normalize(features.flatten(1), dim=-1)
        heads = [neck(features[:, i]) for i, neck in enumerate(self.necks)]
        logits = tuple(h[1] for h in heads) if config.num_identities else None
        cls_feature, part_features = features[:, 0], features[:, 1:].flatten(1)

        loss = None
        if labels is not None:
            identity = torch.stack(
                [
                    cross_entropy_with_label_smoothing(h, labels, config.label_smoothing)
                    for h in logits
                ]
            ).mean()
            triplet = batch_hard_triplet_loss(cls_feature, labels, config.triplet_margin)
            triplet = triplet + batch_hard_triplet_loss(
                part_features, labels, config.triplet_margin
            )
            loss = identity + config.triplet_weight * triplet

        return AAformerModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=(cls_feature, part_features),
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
            part_assignments=tuple(record) if record is not None else None,
        )

    def _fixed_alignment(
        self, grid: tuple[int, int], num_tokens: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mask shared by every image, head and layer when the assignment does not
        depend on the scores, ``(1, 1, T, T)``; and with ``"stripes"`` the part of every
        patch per group ``(groups, N)`` (parts indexed over all groups), else None."""
        config = self.config
        mask = token_attention_mask(config, num_tokens, dtype, device)
        if config.assignment == "none":
            return mask[None, None], None
        first_patch = 1 + config.num_parts
        groups = []
        for offset, size in zip(_group_offsets(config.part_granularities),
                                config.part_granularities, strict=True):
            assigned = stripe_assignments(grid, size, device)  # (N,)
            rows = slice(1 + offset, 1 + offset + size)
            mask[rows, first_patch:] = assignment_mask(assigned, size, dtype)
            groups.append(assigned + offset)
        return mask[None, None], torch.stack(groups)
