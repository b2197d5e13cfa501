"""HAT: Hierarchical Aggregation Transformers for person re-identification.

The outputs ``X_1..X_3`` of ResNet stages 1-3 (optionally also ``X_4``, as a fourth level) are
refined, brought to one grid and calibrated by a transformer, level by level; each level also
consumes the previous level's calibrated map (deeply supervised aggregation, DSA):

    X_s' = scale_to_grid(bottleneck_s(X_s))                  (B, C_s, rows, cols)
    Z_s_in = concat(X_s', Z_{s-1})    (X_s' alone at the first level)
    m_s, P_s = TFC_s(Z_s_in)          class token (B, C_out_s), patch tokens as a map
    Z_s = neighbourhood_adjustment_s(P_s)                    (B, C_out_s, rows, cols)

with ``rows x cols`` the input size divided by ``scale_factor`` (16x8 at 256x128); without
Neighbourhood Adjustment (an ablation) ``Z_s = P_s``. Heads: ``b = GAP(X_4)`` and every
``m_s`` (only the final one without deep supervision), each through a BNNeck. The last
level's patch tokens feed nothing, so it has no Neighbourhood Adjustment (the released code
builds one; that and other unused modules are its ~50 M dead parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ...backbones import (
    Bottleneck,
    ViTEncoder,
    ViTLayer,
    feature_grid,
)
from ...backbones.vit import resize_position_embeddings
from ...configuration_utils import ConfigView
from ...losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import BNNeck, ResNetReIDPreTrainedModel
from .configuration_hat import HATConfig


def scale_to_grid(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, rows, cols)``: bilinear upsampling along the axes where the
    map is smaller than the grid, then adaptive max pooling (the identity at equal size)."""
    height, width = feature_map.shape[-2:]
    rows, cols = grid
    if height < rows or width < cols:
        feature_map = F.interpolate(
            feature_map,
            size=(max(height, rows), max(width, cols)),
            mode="bilinear",
            align_corners=False,
        )
    return F.adaptive_max_pool2d(feature_map, grid)


class CalibrationEmbeddings(nn.Module):
    """Tokens of one TFC: a linear embedding of every grid cell, a class token in front and
    learned positions (resized bilinearly for other grids, the class entry kept).

    Attributes:
        projection: ``Linear(in_channels, hidden_size)``.
        cls_token: ``(1, 1, hidden_size)``.
        position_embeddings: ``(1, 1 + rows * cols, hidden_size)`` for `position_grid`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        grid: tuple[int, int],
        dropout: float,
        token_init_std: float,
    ) -> None:
        super().__init__()
        self.position_grid = grid
        self.projection = nn.Linear(in_channels, hidden_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, hidden_size))
        self.position_embeddings = nn.Parameter(torch.empty(1, 1 + grid[0] * grid[1], hidden_size))
        self.dropout = nn.Dropout(dropout)
        # Usable on its own; HATPreTrainedModel._init_weights draws the same distribution.
        nn.init.normal_(self.cls_token, std=token_init_std)
        nn.init.normal_(self.position_embeddings, std=token_init_std)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, rows, cols)`` -> ``(B, 1 + rows * cols, hidden_size)``."""
        batch_size, _, rows, cols = feature_map.shape
        tokens = self.projection(feature_map.flatten(2).transpose(1, 2))  # row-major cells
        tokens = torch.cat((self.cls_token.expand(batch_size, -1, -1), tokens), dim=1)
        positions = resize_position_embeddings(
            self.position_embeddings, self.position_grid, (rows, cols)
        )
        return self.dropout(tokens + positions)


class CalibrationLayer(ViTLayer):
    """One TFC transformer layer: the shared pre-norm `ViTLayer` with ``tfc_norm="pre"``
    (released code), or with ``"post"`` (the paper's formulation)

        x = norm1(x + attention(x))
        x = norm2(x + mlp(x))
    """

    def __init__(self, config: ConfigView, drop_path_rate: float = 0.0) -> None:
        super().__init__(config, drop_path_rate)
        self.post_norm = config.tfc_norm == "post"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T, D)`` -> ``((B, T, D), attention weights (B, heads, T, T) or None)``."""
        if not self.post_norm:
            return super().forward(hidden_states, attention_mask, output_attentions)
        attention_output, weights = self.attention(hidden_states, attention_mask, output_attentions)
        hidden_states = self.norm1(hidden_states + self.drop_path(attention_output))
        hidden_states = self.norm2(hidden_states + self.drop_path(self.mlp(hidden_states)))
        return hidden_states, weights


class FeatureCalibration(nn.Module):
    """Transformer-based Feature Calibration (TFC) of one level: `CalibrationEmbeddings`,
    then a `ViTEncoder` of `CalibrationLayer` blocks (no final norm).

    The layers are built from a `ConfigView` of the model config with this level's width and
    depth, the TFC head layout (``tfc_num_heads`` x ``tfc_head_dim``, independent of the
    width), the ``attention_scale``, no qkv bias, ``tfc_dropout`` after the attention
    projection, the feed-forward activation and its output, and ``tfc_attention_dropout`` on
    the attention weights; the attention implementation stays the model's.
    """

    def __init__(
        self,
        config: HATConfig,
        in_channels: int,
        hidden_size: int,
        depth: int,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        layer_config = ConfigView(
            config,
            hidden_size=hidden_size,
            num_hidden_layers=depth,
            num_attention_heads=config.tfc_num_heads,
            head_dim=config.tfc_head_dim,
            intermediate_size=config.tfc_intermediate_size,
            hidden_act=config.tfc_hidden_act,
            attention_scale=config.attention_scale,
            qkv_bias=False,
            hidden_dropout_prob=config.tfc_dropout,
            activation_dropout=config.tfc_dropout,
            attention_probs_dropout_prob=config.tfc_attention_dropout,
            drop_path_rate=0.0,
        )
        self.embeddings = CalibrationEmbeddings(
            in_channels, hidden_size, grid, config.tfc_dropout, config.tfc_token_init_std
        )
        self.encoder = ViTEncoder(layer_config, make_layer=CalibrationLayer)

    def forward(
        self, feature_map: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Calibrate ``(B, in_channels, rows, cols)``.

        Returns:
            ``(m, patch_map, attentions)``: the class token ``(B, hidden_size)``, the patch
            tokens as a map ``(B, hidden_size, rows, cols)`` and, with ``output_attentions``,
            each layer's weights ``(B, heads, 1 + rows * cols, 1 + rows * cols)``.
        """
        batch_size, _, rows, cols = feature_map.shape
        encoded = self.encoder(self.embeddings(feature_map), output_attentions=output_attentions)
        hidden_states = encoded.last_hidden_state
        patch_map = hidden_states[:, 1:].transpose(1, 2).reshape(batch_size, -1, rows, cols)
        return hidden_states[:, 0], patch_map, encoded.attentions or ()


class HATPreTrainedModel(ResNetReIDPreTrainedModel):
    config_class = HATConfig
    base_model_prefix = "hat"
    # Only the TFC transformer layers train at the reduced transformer learning rate, as the
    # released code's "transformer" name match: not the TFC embeddings (projection, class
    # token, positions), bottlenecks, Neighbourhood Adjustments or heads. One prefix per
    # possible level key "1".."4".
    transformer_parameter_prefixes = tuple(
        f"calibrations.{level}.encoder." for level in range(1, 5)
    )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, CalibrationEmbeddings):
            # Plain normal of tfc_token_init_std (the released code's torch.randn at 1.0),
            # not the truncated normal of initializer_range other token tables get.
            std = self.config.tfc_token_init_std
            init.normal_(module.cls_token, std=std)
            init.normal_(module.position_embeddings, std=std)
        else:
            super()._init_weights(module)


class HATModel(HATPreTrainedModel):
    """HAT: a ResNet (ResNet-50 by default) whose stage outputs are aggregated by
    transformers, level by level.

    Levels are keyed ``"1"``..``"3"`` (``"4"`` with the stage-4 map as a fourth level) in the
    module dictionaries; a level with ``tfc_depths[s] == 0`` has no entry. The *final* level
    is the last active one; the others are auxiliary.

    - ``embeddings`` ``(B, C_4 + C_out_final)``, ``C_4`` the trunk's last stage width:
      ``concat(BN(GAP(X_4)), BN(m_final))``, L2-normalised (4096-d by default).
    - ``logits``: ``(b, m_s for each supervised level)`` classifier outputs
      ``(B, num_identities)``; the supervised levels are all active ones, or only the final
      one when ``aux_lambda == 0`` (no deep supervision: auxiliary levels have no heads).
    - ``features``: the pre-BN ``(GAP(X_4), m_s...)``, in the same order.
    - ``loss``: ``CE_LS(b) + CE_LS(m_final) + triplet(b) + triplet(m_final)
      + aux_lambda * sum over the auxiliary levels of (CE_LS(m_s) + triplet(m_s))``.
    - ``hidden_states``: the four trunk stage outputs; ``attentions``: every TFC layer's
      weights, level by level (eager attention only).
    """

    def __init__(self, config: HATConfig) -> None:
        super().__init__(config)
        grid = feature_grid(*config.image_size, config.scale_factor)
        levels = config.active_levels
        # Without deep supervision (aux_lambda 0) the auxiliary levels' heads would be
        # trained by nothing, so they are not built.
        supervised = levels if config.aux_lambda else levels[-1:]
        self.bottlenecks = nn.ModuleDict()
        self.calibrations = nn.ModuleDict()
        self.adjustments = nn.ModuleDict()
        self.level_necks = nn.ModuleDict()
        previous_channels = 0
        for level in levels:
            key, channels = str(level + 1), config.stage_channels[level]
            hidden_size = config.tfc_hidden_sizes[level]
            self.bottlenecks[key] = nn.Sequential(
                *(_channel_preserving_bottleneck(channels) for _ in range(config.bottleneck_depth))
            )
            self.calibrations[key] = FeatureCalibration(
                config, channels + previous_channels, hidden_size, config.tfc_depths[level], grid
            )
            if level != levels[-1] and config.neighbourhood_adjustment:
                self.adjustments[key] = _channel_preserving_bottleneck(hidden_size)
            if level in supervised:
                self.level_necks[key] = BNNeck(hidden_size, config.num_identities)
            previous_channels = hidden_size
        self.global_neck = BNNeck(config.stage_channels[-1], config.num_identities)
        self.post_init()

    def calibration_input_channels(self) -> dict[str, int]:
        """Channels each active level's TFC consumes: ``C_s + C_out`` of the level before."""
        return {
            key: tfc.embeddings.projection.in_features for key, tfc in self.calibrations.items()
        }

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool, **kwargs,
    ) -> ReIDModelOutput:
        config = self.config
        stages = self.resnet(pixel_values)
        grid = feature_grid(*pixel_values.shape[-2:], config.scale_factor)
        level_features, attentions = [], []
        previous = None  # Z_{s-1}
        for key, calibration in self.calibrations.items():
            scaled = scale_to_grid(self.bottlenecks[key](stages[int(key) - 1]), grid)
            inputs = scaled if previous is None else torch.cat((scaled, previous), dim=1)
            cls_feature, patch_map, weights = calibration(inputs, output_attentions)
            if key in self.level_necks:
                level_features.append(cls_feature)
            attentions.extend(weights)
            previous = self.adjustments[key](patch_map) if key in self.adjustments else patch_map

        global_feature = stages[-1].mean((2, 3))  # (B, C_4)
        global_normed, global_logits = self.global_neck(global_feature)
        heads = [neck(f) for neck, f in zip(self.level_necks.values(), level_features, strict=True)]
        embeddings = F.normalize(torch.cat((global_normed, heads[-1][0]), dim=-1), dim=-1)
        logits = (global_logits, *(h[1] for h in heads)) if config.num_identities else None
        features = (global_feature, *level_features)

        loss = None
        if labels is not None:
            def head_loss(head_logits: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
                return cross_entropy_with_label_smoothing(
                    head_logits, labels, config.label_smoothing
                ) + batch_hard_triplet_loss(feature, labels, config.triplet_margin)

            terms = [head_loss(h, f) for h, f in zip(logits, features, strict=True)]
            # terms: b, the supervised auxiliary levels (none at aux_lambda 0), the final level.
            loss = terms[0] + terms[-1] + config.aux_lambda * sum(terms[1:-1])

        return ReIDModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=features,
            hidden_states=stages if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


def _channel_preserving_bottleneck(channels: int) -> Bottleneck:
    """A ResNet bottleneck ``channels -> channels / 4 -> channels`` with identity shortcut."""
    return Bottleneck(channels, channels // Bottleneck.expansion, 1, nn.BatchNorm2d)
