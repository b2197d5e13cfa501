"""Output container shared by every re-ID model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class ReIDModelOutput(ModelOutput):
    """What a re-ID model returns.

    ``embeddings`` comes first so that ``pipeline("image-feature-extraction", pool=False)``,
    which returns the first field that is set, yields the retrieval embedding.

    Attributes:
        embeddings: ``(B, D_test)`` the retrieval embedding (what to index and compare).
        pooler_output: the same tensor as ``embeddings`` (for ``pool=True`` pipelines).
        loss: scalar training loss, only when ``labels`` are given.
        logits: one ``(B, num_identities)`` tensor per classification head; ``None`` for a
            feature extractor (``num_identities = 0``).
        features: the feature vectors the metric-learning losses use, one ``(B, d)`` tensor
            per feature, before any BNNeck.
        hidden_states: backbone hidden states when requested.
        attentions: backbone attention maps when requested (eager attention only).
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    loss: torch.FloatTensor | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
