"""LA-Transformer: Locally Aware Transformer for person re-identification.

Sharma, Kapil, Chapman, "Person Re-Identification with a Locally Aware Transformer", 2021
(arXiv:2106.03720). A ViT whose patch tokens are averaged per patch row; each row, mixed with
the class token ("globally enhanced local tokens", GELT), gets its own identity classifier.
The paper's Table 2 ablations are config switches: ``classifier_input="global"`` ("LA
Global") and ``classification="cls"`` (the single-classifier ViT baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import ViTReIDPreTrainedModel
from .configuration_la_transformer import LATransformerConfig


class LATransformerClassifier(nn.Module):
    """``Linear(D, h) -> BN(h) [-> ReLU] -> Dropout -> Linear(h, C)``: the classifier of one
    patch row (or of the [CLS] token in the single-classifier baseline)."""

    def __init__(self, config: LATransformerConfig) -> None:
        super().__init__()
        hidden = config.classifier_hidden_size
        self.bottleneck = nn.Linear(config.hidden_size, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.activation = nn.ReLU() if config.classifier_activation == "relu" else nn.Identity()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_identities)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> logits ``(B, C)``."""
        return self.classifier(
            self.dropout(self.activation(self.norm(self.bottleneck(feature))))
        )


class LATransformerPreTrainedModel(ViTReIDPreTrainedModel):
    config_class = LATransformerConfig
    base_model_prefix = "la_transformer"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LATransformerClassifier):
            # The released code's ClassBlock init (kaiming fan-out, BN ~ N(1, 0.02), small
            # classifier); it runs after the generic init of the children, so it wins.
            init.kaiming_normal_(module.bottleneck.weight, mode="fan_out")
            init.zeros_(module.bottleneck.bias)
            init.normal_(module.norm.weight, mean=1.0, std=0.02)
            init.zeros_(module.norm.bias)
            init.normal_(module.classifier.weight, std=0.001)
            init.zeros_(module.classifier.bias)
        else:
            super()._init_weights(module)


class LATransformerModel(LATransformerPreTrainedModel):
    """LA-Transformer.

    Input ``pixel_values`` ``(B, 3, H, W)``; the patch grid has ``R`` rows and ``W'`` columns.

    - ``embeddings`` ``(B, R * D)``: one vector per row (row means, or GELT rows with
      ``test_feature="gelt"``), each L2-normalised and scaled by ``1 / sqrt(R)`` so the whole
      embedding has unit norm; compare with inner product / cosine. With
      ``classification="cls"``: the L2-normalised [CLS] feature ``(B, D)``.
    - ``logits``: ``R`` tensors ``(B, num_identities)``, one per row classifier (one tensor
      with ``classification="cls"``), only when ``num_identities > 0``; ``loss``: the sum
      over classifiers of plain cross-entropy.
    - ``features``: what each classifier sees, ``(B, D)`` each: the ``R`` GELT rows, the
      [CLS] token ``R`` times with ``classifier_input="global"``, or the [CLS] token once
      with ``classification="cls"``.

    Inputs of another size run (position embeddings are resized on the fly); the row
    classifiers need the configured number of rows, so with a different row count the model
    returns embeddings but no logits, and asking for a loss raises an error. The [CLS]
    classifier works at any size.
    """

    #: Trained with plain cross-entropy only (no triplet term) on shuffled batches, as the
    #: released code does: no identity-balanced (P x K) sampling needed.
    requires_identity_balanced_batches = False

    def __init__(self, config: LATransformerConfig) -> None:
        super().__init__(config)
        has_heads = bool(config.num_identities)
        per_row = config.classification == "rows"
        self.row_classifiers = (
            nn.ModuleList(LATransformerClassifier(config) for _ in range(config.num_patch_rows))
            if has_heads and per_row
            else None
        )
        self.cls_classifier = (
            LATransformerClassifier(config) if has_heads and not per_row else None
        )
        self.post_init()

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool, **kwargs,
    ) -> ReIDModelOutput:
        backbone = self.vit(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        tokens = backbone.last_hidden_state  # (B, 1 + R * W', D), after the final LayerNorm
        cls = tokens[:, 0]
        if self.config.classification == "cls":
            embeddings, features, logits = self._cls_heads(cls)
        else:
            rows, cols = self.vit.embeddings.grid_size(*pixel_values.shape[-2:])
            row_means = tokens[:, 1:].reshape(len(tokens), rows, cols, -1).mean(2)  # (B, R, D)
            embeddings, features, logits = self._row_heads(cls, row_means)

        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError(
                    "labels were given but the model has no row classifiers for this input: "
                    f"num_identities={self.config.num_identities}, {len(features)} patch rows "
                    f"vs {self.config.num_patch_rows} configured "
                    f"(image_size={self.config.image_size})"
                )
            loss = sum(F.cross_entropy(head_logits.float(), labels) for head_logits in logits)

        return ReIDModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=features,
            hidden_states=backbone.hidden_states,
            attentions=backbone.attentions,
        )

    def _row_heads(
        self, cls: torch.Tensor, row_means: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """(embeddings, classifier inputs, logits or None) from the [CLS] token ``(B, D)``
        and the row means ``(B, R, D)``."""
        rows = row_means.shape[1]
        lam = self.config.gelt_lambda
        gelt = (row_means + lam * cls.unsqueeze(1)) / (1 + lam)  # (B, R, D)
        test_rows = row_means if self.config.test_feature == "local" else gelt
        embeddings = (F.normalize(test_rows, dim=-1) / math.sqrt(rows)).flatten(1)
        if self.config.classifier_input == "gelt":
            features = tuple(gelt.unbind(1))
        else:  # "LA Global": every row classifier sees the class token
            features = (cls,) * rows
        logits = None
        if self.row_classifiers is not None and rows == len(self.row_classifiers):
            logits = tuple(head(x) for head, x in zip(self.row_classifiers, features, strict=True))
        return embeddings, features, logits

    def _cls_heads(
        self, cls: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor], tuple[torch.Tensor] | None]:
        """(embeddings, classifier inputs, logits or None) of the single-classifier ViT
        baseline: everything comes from the [CLS] token ``(B, D)``."""
        logits = (self.cls_classifier(cls),) if self.cls_classifier is not None else None
        return F.normalize(cls, dim=-1), (cls,), logits

    @torch.no_grad()
    def predict_identity(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Training-identity prediction ``(B,)``: argmax of the sum of per-row softmaxes
        (paper eq. 8-9; the [CLS] classifier's argmax with ``classification="cls"``). Needs
        ``num_identities > 0`` and, for row classifiers, the configured input size."""
        logits = self(pixel_values, return_dict=True).logits
        if logits is None:
            raise ValueError(
                "predict_identity needs the row classifiers: num_identities must be > 0 and "
                f"the input must have {self.config.num_patch_rows} patch rows"
            )
        return torch.stack([head.softmax(-1) for head in logits]).sum(0).argmax(-1)
