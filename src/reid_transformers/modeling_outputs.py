"""Output container shared by every re-ID model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class ReIDModelOutput(ModelOutput):
    """What a re-ID model returns.

    ``embeddings`` comes first, and transformers' ``pipeline("image-feature-extraction")``
    returns the first field that is set when ``pool=False`` (its default): every ``pool``
    setting therefore yields the retrieval embedding, ``(1, D_test)`` per image, not
    per-token features as ``pool=False`` gives for other models. Those are in
    ``hidden_states`` (``output_hidden_states=True``).

    Attributes:
        embeddings: ``(B, D_test)`` the retrieval embedding (what to index and compare).
        pooler_output: the same tensor as ``embeddings`` (for ``pool=True`` pipelines).
        loss: scalar training loss, only when ``labels`` are given.
        logits: one ``(B, num_identities)`` tensor per classification head; ``None`` for a
            feature extractor (``num_identities = 0``).
        features: the feature vectors the metric-learning losses use, one ``(B, d)`` tensor
            per feature, before any BNNeck.
        hidden_states: the features before pooling, when requested: the tokens
            ``(B, tokens, D)`` entering the first transformer layer and leaving each one, or
            a ResNet trunk's four stage maps ``(B, C, h, w)``.
        attentions: backbone attention maps when requested (eager attention only).
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    loss: torch.FloatTensor | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
