"""LA-Transformer: Locally Aware Transformer for person re-identification.

Sharma, Kumar, Chakraborty, "Person Re-Identification with a Locally Aware Transformer",
NeurIPS 2021 workshop (arXiv:2106.03720). A ViT whose patch tokens are averaged per patch
row; each row, mixed with the class token ("globally enhanced local tokens", GELT), gets
its own identity classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ...backbones import LoadReport, ViTBackbone, load_vit_pretrained
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import ReIDPreTrainedModel
from .configuration_la_transformer import LATransformerConfig


class LATransformerRowClassifier(nn.Module):
    """``Linear(D, h) -> BN(h) [-> ReLU] -> Dropout -> Linear(h, C)`` for one patch row."""

    def __init__(self, config: LATransformerConfig) -> None:
        super().__init__()
        hidden = config.classifier_hidden_size
        self.bottleneck = nn.Linear(config.hidden_size, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.activation = nn.ReLU() if config.classifier_activation == "relu" else nn.Identity()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_identities)

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> logits ``(B, C)``."""
        return self.classifier(self.dropout(self.activation(self.norm(self.bottleneck(row)))))


class LATransformerPreTrainedModel(ReIDPreTrainedModel):
    config_class = LATransformerConfig
    base_model_prefix = "la_transformer"
    trunk_parameter_prefixes = ("vit.",)
    _no_split_modules = ["ViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LATransformerRowClassifier):
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
    """LA-Transformer (ARCHITECTURES.md section 1).

    Input ``pixel_values`` ``(B, 3, H, W)``; the patch grid has ``R`` rows and ``W'`` columns.

    - ``embeddings`` ``(B, R * D)``: one vector per row (row means, or GELT rows with
      ``test_feature="gelt"``), each L2-normalised and scaled by ``1 / sqrt(R)`` so the whole
      embedding has unit norm; compare with inner product / cosine.
    - ``logits``: ``R`` tensors ``(B, num_identities)``, one per row classifier (only when
      ``num_identities > 0``); ``loss``: the sum over rows of plain cross-entropy.
    - ``features``: the ``R`` GELT row vectors ``(B, D)`` the classifiers see.

    Inputs of another size run (position embeddings are resized on the fly); the row
    classifiers need the configured number of rows, so with a different row count the model
    returns embeddings but no logits, and asking for a loss raises an error.
    """

    def __init__(self, config: LATransformerConfig) -> None:
        super().__init__(config)
        self.vit = ViTBackbone(config)
        self.row_classifiers = (
            nn.ModuleList(LATransformerRowClassifier(config) for _ in range(config.num_rows))
            if config.num_identities
            else None
        )
        self.post_init()

    def unfreezable_blocks(self) -> list[nn.Module]:
        return self.vit.unfreezable_blocks()

    def load_pretrained_backbone(self, source: str, *, strict: bool = True) -> LoadReport:
        return load_vit_pretrained(self.vit, source, strict=strict)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ReIDModelOutput | tuple:
        return_dict, output_hidden_states, output_attentions = self._resolve_output_flags(
            return_dict, output_hidden_states, output_attentions
        )
        self._check_labels(labels, pixel_values.shape[0])
        backbone = self.vit(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        tokens = backbone.last_hidden_state  # (B, 1 + R * W', D), after the final LayerNorm
        rows, cols = self.vit.embeddings.grid_size(*pixel_values.shape[-2:])
        cls = tokens[:, 0]
        row_means = tokens[:, 1:].reshape(len(tokens), rows, cols, -1).mean(2)  # (B, R, D)
        lam = self.config.gelt_lambda
        gelt = (row_means + lam * cls.unsqueeze(1)) / (1 + lam)  # (B, R, D)

        test_rows = row_means if self.config.test_feature == "local" else gelt
        embeddings = (F.normalize(test_rows, dim=-1) / math.sqrt(rows)).flatten(1)

        logits = None
        if self.row_classifiers is not None and rows == len(self.row_classifiers):
            logits = tuple(head(gelt[:, i]) for i, head in enumerate(self.row_classifiers))
        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError(
                    "labels were given but the model has no row classifiers for this input: "
                    f"num_identities={self.config.num_identities}, {rows} patch rows vs "
                    f"{self.config.num_rows} configured (image_size={self.config.image_size})"
                )
            loss = sum(F.cross_entropy(row_logits.float(), labels) for row_logits in logits)

        output = ReIDModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=tuple(gelt.unbind(1)),
            hidden_states=backbone.hidden_states,
            attentions=backbone.attentions,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def predict_identity(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Training-identity prediction ``(B,)``: argmax of the sum of per-row softmaxes
        (paper eq. 8-9). Needs ``num_identities > 0`` and the configured input size."""
        logits = self(pixel_values, return_dict=True).logits
        if logits is None:
            raise ValueError(
                "predict_identity needs the row classifiers: num_identities must be > 0 and "
                f"the input must have {self.config.num_rows} patch rows"
            )
        return torch.stack([row.softmax(-1) for row in logits]).sum(0).argmax(-1)
