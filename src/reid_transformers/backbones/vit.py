"""Compact Vision Transformer (ViT) backbone, with loaders for Hugging Face and timm weights.

The backbone computes the standard pre-norm ViT of Dosovitskiy et al. (2021) as used by
TransReID, LA-Transformer and AAformer:

    x = [CLS; Conv2d(pixels) flattened row-major] + position embeddings   (B, 1+N, D)
    repeat num_hidden_layers times:
        x = x + drop_path(attention(norm1(x)))
        x = x + drop_path(mlp(norm2(x)))
    last_hidden_state = layernorm(x)

with B the batch size, N = rows * cols patch tokens and D = ``hidden_size``. Patches may
overlap (``patch_stride < patch_size``); the position grid of the configured image size is
resized bilinearly on the fly for inputs of other sizes, and at load time for checkpoints
trained at other sizes.

Attention goes through transformers' attention interface: ``config._attn_implementation``
selects ``"eager"`` (this module's `eager_attention_forward`, the only path that returns
attention weights) or ``"sdpa"`` (`torch.nn.functional.scaled_dot_product_attention`).
The logits are scaled by ``head_dim ** -0.5``, or by ``hidden_size ** -0.5`` with
``config.attention_scale = "width"`` (see `ATTENTION_SCALES`).

Weights: `load_vit_pretrained` reads a Hugging Face ViT checkpoint (a local folder or a Hub
repository id), a timm-format state dict file (``.safetensors``, or ``.pth``/``.pt``/``.bin``
read with ``torch.load(weights_only=True)``), or an in-memory state dict.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig, ViTConfig
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..configuration_utils import ATTENTION_SCALES, as_pair
from .loading import (
    CheckpointUnavailableError,
    LoadReport,
    RenameRule,
    apply_rename_rules,
    detect_layout,
    load_converted,
    read_checkpoint,
    read_hf_config,
    rename_rule,
)

#: A mask computed from a layer's own queries and keys, each ``(B, heads, T, head_dim)``.
MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "ATTENTION_SCALES",
    "CheckpointUnavailableError",
    "DropPath",
    "LoadReport",
    "SourceFormat",
    "ViTAttention",
    "ViTBackbone",
    "ViTEmbeddings",
    "ViTEncoder",
    "ViTLayer",
    "ViTMLP",
    "ViTSelfAttention",
    "eager_attention_forward",
    "load_vit_pretrained",
    "resize_position_embeddings",
]

logger = logging.getLogger(__name__)

SourceFormat: TypeAlias = Literal["huggingface", "timm", "reid_transformers"]
StateDict: TypeAlias = Mapping[str, torch.Tensor]

def _attention_implementation(config: PreTrainedConfig) -> str:
    # A config that never went through PreTrainedModel.__init__ (a backbone used on its own)
    # has no implementation chosen yet; eager is what transformers falls back to as well.
    return getattr(config, "_attn_implementation", None) or "eager"


def resize_position_embeddings(
    position_embeddings: torch.Tensor,
    source_grid: tuple[int, int],
    target_grid: tuple[int, int],
) -> torch.Tensor:
    """Resize a class-token + patch-grid position table to another grid.

    The patch entries are viewed as a ``source_grid`` image with D channels (row-major, as
    the patch tokens are ordered) and resized bilinearly (``align_corners=False``, no
    antialiasing, as TransReID does); the class-token entry is kept unchanged.

    Args:
        position_embeddings: ``(1, 1 + rows * cols, D)`` for ``source_grid = (rows, cols)``.
        source_grid: (rows, cols) of the patch grid the table was trained for.
        target_grid: (rows, cols) of the wanted patch grid.

    Returns:
        ``(1, 1 + target_rows * target_cols, D)``, same dtype and device as the input;
        differentiable with respect to ``position_embeddings``.
    """
    if position_embeddings.ndim != 3 or position_embeddings.shape[0] != 1:
        raise ValueError(
            "position_embeddings must have shape (1, 1 + rows * cols, hidden_size), got "
            f"{tuple(position_embeddings.shape)}"
        )
    for name, grid in (("source_grid", source_grid), ("target_grid", target_grid)):
        if len(grid) != 2 or any(not isinstance(n, int) or n < 1 for n in grid):
            raise ValueError(f"{name} must be a pair of positive ints (rows, cols), got {grid!r}")
    rows, cols = source_grid
    num_patches = position_embeddings.shape[1] - 1
    if num_patches != rows * cols:
        raise ValueError(
            f"position_embeddings hold {num_patches} patch entries (plus the class token), "
            f"which is not source_grid {rows}x{cols} = {rows * cols}"
        )
    if tuple(source_grid) == tuple(target_grid):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    class_entry, patch_entries = position_embeddings[:, :1], position_embeddings[:, 1:]
    grid = patch_entries.reshape(1, rows, cols, dim).permute(0, 3, 1, 2)  # (1, D, rows, cols)
    # Interpolate in float32: bilinear weights in half precision visibly round the table.
    grid = F.interpolate(
        grid.float(), size=tuple(target_grid), mode="bilinear", align_corners=False
    )
    patch_entries = grid.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_entry, patch_entries), dim=1)


class ViTEmbeddings(nn.Module):
    """Patch embedding, class token and (resizable) learned position embeddings.

    Config fields read (a `ViTReIDConfig`'s, validated there): ``image_size``,
    ``patch_size``, ``patch_stride``, ``num_channels``, ``hidden_size``,
    ``hidden_dropout_prob``, ``initializer_range``.

    Attributes:
        projection: ``Conv2d(num_channels, hidden_size, kernel=patch_size, stride=patch_stride)``.
        cls_token: ``(1, 1, hidden_size)``.
        position_embeddings: ``(1, 1 + rows * cols, hidden_size)`` for `position_grid`.
        position_grid: (rows, cols) of the configured ``image_size``.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_stride = config.patch_stride
        self.num_channels = config.num_channels
        self.position_grid: tuple[int, int] = self.grid_size(*config.image_size)
        rows, cols = self.position_grid

        hidden_size = config.hidden_size
        self.projection = nn.Conv2d(
            self.num_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_stride
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, hidden_size))
        self.position_embeddings = nn.Parameter(torch.empty(1, 1 + rows * cols, hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        nn.init.trunc_normal_(self.cls_token, std=config.initializer_range)
        nn.init.trunc_normal_(self.position_embeddings, std=config.initializer_range)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) for an image of ``height`` x ``width`` pixels.

        rows = (height - patch_size) // patch_stride + 1 (likewise cols): the convolution's
        output size, so trailing pixels that do not fill a whole patch are not seen.
        """
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"image of {height}x{width} pixels is smaller than one {self.patch_size}x"
                f"{self.patch_size} patch"
            )
        return (
            (height - self.patch_size) // self.patch_stride + 1,
            (width - self.patch_size) // self.patch_stride + 1,
        )

    def position_embeddings_for_grid(self, rows: int, cols: int) -> torch.Tensor:
        """Position table ``(1, 1 + rows * cols, hidden_size)`` for a (rows, cols) patch grid.

        The learned table itself when the grid is `position_grid`, else its bilinear resize
        (see `resize_position_embeddings`); gradients flow to the learned table either way.
        """
        return resize_position_embeddings(
            self.position_embeddings, self.position_grid, (rows, cols)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed images.

        Args:
            pixel_values: ``(B, num_channels, H, W)``, normalised pixels; cast to the
                projection's dtype.

        Returns:
            ``(B, 1 + rows * cols, hidden_size)``: the class token, then the patch tokens in
            row-major order, position embeddings added, dropout applied.
        """
        if pixel_values.ndim != 4:
            raise ValueError(
                "pixel_values must have shape (batch, channels, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        batch_size, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels, expected config.num_channels = "
                f"{self.num_channels}"
            )
        rows, cols = self.grid_size(height, width)
        patches = self.projection(pixel_values.to(self.projection.weight.dtype))  # (B, D, r, c)
        patches = patches.flatten(2).transpose(1, 2)  # (B, r * c, D), row-major
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, patches), dim=1)
        embeddings = embeddings + self.position_embeddings_for_grid(rows, cols)
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with the signature of transformers' attention interface.

    Args:
        module: the calling attention module (its ``training`` flag gates dropout).
        query, key, value: ``(B, heads, T, head_dim)``.
        attention_mask: additive float mask broadcastable to ``(B, heads, T, T)`` or None.
        scaling: multiplier of the scores (``head_dim ** -0.5`` or ``hidden_size ** -0.5``,
            see `ATTENTION_SCALES`).
        dropout: dropout probability on the attention weights.
        **kwargs: further interface arguments, unused here.

    Returns:
        ``(context, weights)``: context ``(B, T, heads, head_dim)`` and the post-softmax
        (pre-dropout) weights ``(B, heads, T, T)``.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, h, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask
    # Softmax in float32 so half-precision scores neither overflow nor lose the small weights.
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    context = torch.matmul(F.dropout(weights, p=dropout, training=module.training), value)
    return context.transpose(1, 2).contiguous(), weights


class ViTSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention core with a fused query/key/value projection.

    Config fields read (validated by the model's config): ``hidden_size``,
    ``num_attention_heads``, ``head_dim`` (optional, for heads narrower or wider than
    ``hidden_size / num_attention_heads``), ``attention_scale`` (one of `ATTENTION_SCALES`),
    ``qkv_bias``, ``attention_probs_dropout_prob``, ``_attn_implementation`` (read at every
    call, so ``model.set_attn_implementation(...)`` takes effect at once).

    Attributes:
        qkv: ``Linear(D, 3 * inner_size)`` with ``inner_size = heads * head_dim``; output rows
            are [queries; keys; values], each head-major.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        # HAT's calibration layers set head_dim: 16 x 64 at any width.
        self.head_dim = getattr(config, "head_dim", None) or hidden_size // self.num_attention_heads
        self.config = config
        self.inner_size = self.num_attention_heads * self.head_dim
        # Both implementations receive it (SDPA as its `scale`).
        scale_width = self.head_dim if config.attention_scale == "head_dim" else hidden_size
        self.scaling = scale_width**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        # transformers' SDPA wrapper treats a module without this flag as causal.
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * self.inner_size, bias=config.qkv_bias)

    def project_qkv(
        self, hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(B, heads, T, head_dim)`` each, from ``(B, T, D)``."""
        batch_size, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(
            batch_size, length, 3, self.num_attention_heads, self.head_dim
        )
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, T, hd)
        return query, key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | MaskFn | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend.

        Args:
            hidden_states: ``(B, T, D)``.
            attention_mask: additive float mask (0 = attend, ``-inf`` = blocked),
                broadcastable to ``(B, heads, T, T)``; a query row must keep at least one key.
                Or a callable ``(query, key) -> mask`` (each ``(B, heads, T, head_dim)``),
                for masks that depend on this layer's queries and keys (AAformer's
                part-to-patch alignment); it is called once, after the projection.
            output_attentions: return the attention weights; needs the eager implementation.

        Returns:
            ``(context, weights)``: context ``(B, T, inner_size)`` (heads concatenated, before
            the output projection); weights ``(B, heads, T, T)`` or None.
        """
        query, key, value = self.project_qkv(hidden_states)
        if callable(attention_mask):
            attention_mask = attention_mask(query, key)
        if attention_mask is not None:
            attention_mask = self._checked_mask(attention_mask, query)
        return self.attend(query, key, value, attention_mask, output_attentions)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled dot-product attention with the configured implementation.

        Args:
            query: ``(B, heads, T, head_dim)``.
            key, value: ``(B, heads, S, head_dim)``; ``S`` may differ from ``T`` (Linformer's
                projected keys).
            attention_mask: additive float mask broadcastable to ``(B, heads, T, S)`` or None.
            output_attentions: return the weights; needs the eager implementation.

        Returns:
            ``(context (B, T, inner_size), weights (B, heads, T, S) or None)``.
        """
        implementation = _attention_implementation(self.config)
        if output_attentions and implementation != "eager":
            raise ValueError(
                "output_attentions=True needs config._attn_implementation == 'eager', got "
                f"{implementation!r}; call model.set_attn_implementation('eager') first"
            )
        batch_size, _, length, _ = query.shape
        attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = (
            ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        )
        context, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        context = context.reshape(batch_size, length, self.inner_size)  # (B, T, h * hd)
        return context, (weights if output_attentions else None)

    def _checked_mask(self, attention_mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        batch_size, heads, length, _ = query.shape
        expected = (batch_size, heads, length, length)
        if not attention_mask.is_floating_point():
            raise ValueError(
                "attention_mask must be an additive float mask (0 to attend, -inf to block), "
                f"got dtype {attention_mask.dtype}"
            )
        shape = tuple(attention_mask.shape)
        if len(shape) != 4 or any(n not in (1, m) for n, m in zip(shape, expected, strict=True)):
            raise ValueError(
                f"attention_mask of shape {shape} does not broadcast to "
                f"(batch, heads, tokens, tokens) = {expected}"
            )
        # SDPA requires the mask in the query's dtype; -inf survives the cast.
        return attention_mask.to(query.dtype)


class ViTAttention(nn.Module):
    """`ViTSelfAttention` followed by the output projection and its dropout.

    Attributes:
        attention: the `ViTSelfAttention` core.
        proj: ``Linear(inner_size, D)`` output projection.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.proj = nn.Linear(self.attention.inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T, D)`` -> ``((B, T, D), weights (B, heads, T, T) or None)``: the attention
        core's context, projected. The other arguments go to the core (the mask and
        ``output_attentions`` of `ViTSelfAttention.forward`, a subclass's extra inputs such
        as PRCT's part grid)."""
        context, weights = self.attention(hidden_states, *args, **kwargs)
        return self.dropout(self.proj(context)), weights


class ViTMLP(nn.Module):
    """Position-wise feed-forward block: fc1 -> activation -> [dropout] -> fc2 -> dropout.

    Config fields read: ``hidden_size``, ``intermediate_size``, ``hidden_act`` (a name in
    transformers' ``ACT2FN``, e.g. ``"gelu"``: exact erf GELU, as timm's ``nn.GELU``),
    ``hidden_dropout_prob`` (after fc2) and ``activation_dropout`` (after the activation, as
    HAT's released code; timm's ViT has none there).
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        # An identity at rate 0, so models without it draw no extra random numbers in training.
        self.activation_dropout = (
            nn.Dropout(config.activation_dropout) if config.activation_dropout else nn.Identity()
        )
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(..., D)``."""
        hidden_states = self.activation_dropout(self.activation(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole residual branch per sample.

    Each sample's branch is kept with probability ``1 - drop_prob`` and then scaled by
    ``1 / (1 - drop_prob)`` so its expectation is unchanged; identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` -> ``(B, ...)``, the same tensor in eval mode or when drop_prob is 0."""
        if not self.training or self.drop_prob == 0.0:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        # One draw per sample, broadcast over tokens and channels.
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ViTLayer(GradientCheckpointingLayer):
    """One pre-norm transformer block.

        x = x + drop_path(attention(norm1(x)))
        x = x + drop_path(mlp(norm2(x)))

    Gradient checkpointing (inherited from transformers' ``GradientCheckpointingLayer``):
    when ``gradient_checkpointing`` is set and the layer is training, its activations are
    recomputed in the backward pass. The RNG state is replayed, so dropout and drop-path
    masks are identical in the recomputation.

    Config fields read: those of `ViTAttention` and `ViTMLP`, plus ``layer_norm_eps``.
    """

    def __init__(self, config: PreTrainedConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAttention(config)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | MaskFn | None = None,
        output_attentions: bool = False,
        **attention_kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the block to ``(B, T, D)``; returns ``((B, T, D), attention weights
        (B, heads, T, T) or None)``. ``attention_mask`` and ``output_attentions`` as in
        `ViTSelfAttention.forward`; ``attention_kwargs`` go to the attention core."""
        attention_output, weights = self.attention(
            self.norm1(hidden_states), attention_mask, output_attentions, **attention_kwargs
        )
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, weights


def _drop_path_rates(rate: float, num_layers: int) -> list[float]:
    # Linear 0 -> rate over the blocks, as timm's torch.linspace(0, rate, depth); plain Python
    # because models are built on the meta device when loaded (no tensor values there).
    if num_layers == 1:
        return [0.0]
    return [rate * index / (num_layers - 1) for index in range(num_layers)]


class ViTEncoder(nn.Module):
    """The stack of `ViTLayer` blocks (no final norm).

    Config fields read: ``num_hidden_layers``, ``drop_path_rate`` (stochastic depth rising
    linearly from 0 at the first block to the rate at the last), and those of `ViTLayer`.
    ``make_layer(config, drop_path_rate)`` builds each block (default `ViTLayer`; HAT and PRCT
    pass their `ViTLayer` subclasses).

    ``gradient_checkpointing`` reads/sets the flag of every layer, so both
    ``PreTrainedModel.gradient_checkpointing_enable()`` (which also installs its checkpoint
    function on each layer) and a plain ``encoder.gradient_checkpointing = True`` (which
    falls back to non-reentrant ``torch.utils.checkpoint``) work.
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        make_layer: Callable[[PreTrainedConfig, float], ViTLayer] = ViTLayer,
    ) -> None:
        super().__init__()
        rates = _drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList([make_layer(config, rate) for rate in rates])

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether any layer recomputes its activations in the backward pass (training only)."""
        return any(layer.gradient_checkpointing for layer in self.layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        for layer in self.layers:
            if enabled and not hasattr(layer, "_gradient_checkpointing_func"):
                layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
            layer.gradient_checkpointing = enabled

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | MaskFn | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **attention_kwargs: object,
    ) -> BaseModelOutput:
        """Run all blocks.

        Args:
            hidden_states: ``(B, T, D)`` token embeddings.
            attention_mask: used by every layer (see `ViTSelfAttention.forward`).
            output_hidden_states: also return the input and every layer's output.
            output_attentions: also return every layer's attention weights (eager only).
            **attention_kwargs: passed on to every layer's attention core.

        Returns:
            ``BaseModelOutput`` with ``last_hidden_state`` ``(B, T, D)`` (last block's
            output), ``hidden_states`` (``1 + num_layers`` tensors ``(B, T, D)``, input
            first) or None, ``attentions`` (``num_layers`` tensors ``(B, heads, T, T)``) or None.
        """
        all_hidden_states: list[torch.Tensor] | None = [] if output_hidden_states else None
        all_attentions: list[torch.Tensor] | None = [] if output_attentions else None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            # hidden_states positional: reentrant checkpointing only tracks positional inputs.
            hidden_states, weights = layer(
                hidden_states, attention_mask, output_attentions=output_attentions,
                **attention_kwargs,
            )
            if all_attentions is not None:
                all_attentions.append(weights)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
        )


class ViTBackbone(nn.Module):
    """ViT trunk: `ViTEmbeddings` -> `ViTEncoder` -> final ``layernorm``.

    A plain ``nn.Module`` meant to live inside a model's ``PreTrainedModel``, built from
    that model's config: a `ViTReIDConfig` (or one deriving from it), which validated every
    field it reads; the backbone trusts them.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        """Encode images.

        Args:
            pixel_values: ``(B, num_channels, H, W)`` normalised pixels; H and W need not be
                the configured ``image_size`` (the position grid is resized on the fly).
            output_hidden_states: also return the embeddings and every block's output.
            output_attentions: also return every block's attention weights; needs
                ``config._attn_implementation == "eager"`` (ValueError otherwise).

        Returns:
            ``BaseModelOutput``: ``last_hidden_state`` ``(B, 1 + N, D)`` after the final
            LayerNorm (token 0 is the class token, then the N = rows * cols patches
            row-major); ``hidden_states``: ``1 + num_hidden_layers`` tensors ``(B, 1 + N, D)``
            (embedding output, then each block's output, before the final norm, as
            ``transformers.ViTModel``) or None; ``attentions``: ``num_hidden_layers`` tensors
            ``(B, heads, 1 + N, 1 + N)`` or None.
        """
        encoded = self.encoder(
            self.embeddings(pixel_values),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return BaseModelOutput(
            last_hidden_state=self.layernorm(encoded.last_hidden_state),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    def unfreezable_blocks(self) -> list[ViTLayer]:
        """The encoder blocks from the output side down (last block first), the order in
        which blockwise fine-tuning unfreezes them."""
        return list(reversed(self.encoder.layers))


# --------------------------------------------------------------------------- weight loading
# The reading, layout detection, renaming and checked loading live in `.loading`; this
# module supplies the ViT rename rules, the layout markers and the ViT-specific checks.

_LAYER = r"encoder.layers.\1"
_QKV = _LAYER + r".attention.attention.qkv.\2"
_HF_LEGACY = r"encoder\.layer\.(\d+)\."
_HF_NEW = r"layers\.(\d+)\."


def _qkv(pattern: str, slot: int) -> RenameRule:
    """One of a checkpoint's separate query (0) / key (1) / value (2) tensors, concatenated
    in that order into our fused ``qkv``."""
    return rename_rule(pattern, _QKV, part=slot, parts=3)


_HF_RULES: tuple[RenameRule, ...] = (
    rename_rule(r"embeddings\.cls_token", "embeddings.cls_token"),
    rename_rule(r"embeddings\.position_embeddings", "embeddings.position_embeddings"),
    rename_rule(
        r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"embeddings.projection.\1"
    ),
    # On-disk layout (what save_pretrained writes, and the Hub checkpoints).
    _qkv(_HF_LEGACY + r"attention\.attention\.query\.(\w+)", 0),
    _qkv(_HF_LEGACY + r"attention\.attention\.key\.(\w+)", 1),
    _qkv(_HF_LEGACY + r"attention\.attention\.value\.(\w+)", 2),
    rename_rule(_HF_LEGACY + r"attention\.output\.dense\.(\w+)", _LAYER + r".attention.proj.\2"),
    rename_rule(_HF_LEGACY + r"intermediate\.dense\.(\w+)", _LAYER + r".mlp.fc1.\2"),
    rename_rule(_HF_LEGACY + r"output\.dense\.(\w+)", _LAYER + r".mlp.fc2.\2"),
    rename_rule(_HF_LEGACY + r"layernorm_before\.(\w+)", _LAYER + r".norm1.\2"),
    rename_rule(_HF_LEGACY + r"layernorm_after\.(\w+)", _LAYER + r".norm2.\2"),
    # In-memory layout of transformers >= 5 (ViTModel(...).state_dict()).
    _qkv(_HF_NEW + r"attention\.q_proj\.(\w+)", 0),
    _qkv(_HF_NEW + r"attention\.k_proj\.(\w+)", 1),
    _qkv(_HF_NEW + r"attention\.v_proj\.(\w+)", 2),
    rename_rule(_HF_NEW + r"attention\.o_proj\.(\w+)", _LAYER + r".attention.proj.\2"),
    rename_rule(_HF_NEW + r"mlp\.(fc1|fc2)\.(\w+)", _LAYER + r".mlp.\2.\3"),
    rename_rule(_HF_NEW + r"layernorm_before\.(\w+)", _LAYER + r".norm1.\2"),
    rename_rule(_HF_NEW + r"layernorm_after\.(\w+)", _LAYER + r".norm2.\2"),
    rename_rule(r"layernorm\.(weight|bias)", r"layernorm.\1"),
)

_TIMM_RULES: tuple[RenameRule, ...] = (
    rename_rule(r"cls_token", "embeddings.cls_token"),
    rename_rule(r"pos_embed", "embeddings.position_embeddings"),
    rename_rule(r"patch_embed\.proj\.(weight|bias)", r"embeddings.projection.\1"),
    rename_rule(r"blocks\.(\d+)\.(norm1|norm2)\.(\w+)", _LAYER + r".\2.\3"),
    rename_rule(r"blocks\.(\d+)\.attn\.qkv\.(\w+)", _QKV),
    rename_rule(r"blocks\.(\d+)\.attn\.proj\.(\w+)", _LAYER + r".attention.proj.\2"),
    rename_rule(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", _LAYER + r".mlp.\2.\3"),
    rename_rule(r"norm\.(weight|bias)", r"layernorm.\1"),
)

_RULES: dict[SourceFormat, tuple[RenameRule, ...]] = {
    "huggingface": _HF_RULES,
    "timm": _TIMM_RULES,
    "reid_transformers": (rename_rule(r"(.+)", r"\1"),),
}

#: A key only this format has; also tells the prefix a wrapper put in front of the backbone
#: (``vit.`` in ViTForImageClassification, ``module.`` from DistributedDataParallel, ...).
_FORMAT_MARKERS: dict[SourceFormat, str] = {
    "huggingface": "embeddings.patch_embeddings.projection.weight",
    "timm": "patch_embed.proj.weight",
    "reid_transformers": "embeddings.projection.weight",
}

_IGNORED_HEADS: dict[SourceFormat, re.Pattern[str]] = {
    "huggingface": re.compile(r"(pooler|classifier)\..+"),
    "timm": re.compile(r"(head|head_dist|pre_logits)\..+"),
    "reid_transformers": re.compile(r"(?!)"),  # matches nothing: our layout has no head
}

#: HF config fields that must equal ours for the weights to mean the same computation.
_HF_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "hidden_act",
)

def load_vit_pretrained(
    backbone: ViTBackbone,
    source: str | os.PathLike[str] | StateDict,
    *,
    strict: bool = True,
    source_grid: tuple[int, int] | None = None,
) -> LoadReport:
    """Load pretrained ViT weights into ``backbone`` in place.

    Args:
        backbone: the `ViTBackbone` to fill.
        source: one of
            - a local Hugging Face checkpoint folder (``config.json`` and ``model.safetensors``,
              a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``);
            - a Hub repository id such as ``"google/vit-base-patch16-224"`` (fetched with
              ``huggingface_hub.snapshot_download``, safetensors files only; honours
              ``HF_HUB_OFFLINE`` and the Hub cache);
            - a state dict file: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
              ``torch.load(weights_only=True)`` (a file needing arbitrary unpickling is
              refused); a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped;
            - an in-memory state dict.
            The layout (Hugging Face, timm, or this package's own) is detected from the keys,
            along with any prefix in front of them (``vit.``, ``module.``, ...).
        strict: raise if any backbone parameter gets no value or any checkpoint key is
            left unused (head keys listed in `LoadReport.ignored` never count).
        source_grid: (rows, cols) of the checkpoint's patch grid. Needed only for a state
            dict whose position table is neither our grid's length nor a square grid; taken
            from ``config.json`` for Hugging Face folders.

    Returns:
        A `LoadReport`. The position embeddings are resized bilinearly to the backbone's
        grid (class-token entry kept) when the grids differ, which is how a 224x224
        checkpoint serves a 256x128 or overlapping-patch (``patch_stride < patch_size``)
        backbone: the patch projection weights are the same, only the grid changes.

    The backbone keeps the ``layer_norm_eps`` of its own config: Hub ViT configs say 1e-12
    where timm (and the original JAX models) use 1e-6.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor a Hub id, or a folder
            lacks the expected files.
        OSError: the Hub download failed (no network, unknown repository, offline mode
            without a cached copy).
        ValueError: unrecognised or ambiguous key layout, an HF config whose architecture
            differs from the backbone's, shape mismatches, an unreadable file, or (with
            ``strict``) missing/unexpected keys. Nothing is loaded when it raises.
    """
    if not isinstance(backbone, ViTBackbone):
        raise ValueError(f"backbone must be a ViTBackbone, got {type(backbone).__name__}")
    state_dict, hf_config, description = read_checkpoint(
        source,
        example_repo="google/vit-base-patch16-224",
        read_config=partial(read_hf_config, config_class=ViTConfig, kind="ViT"),
    )
    if hf_config is not None:
        _check_hf_config(hf_config, backbone.config, description)
        if source_grid is None:
            height, width = as_pair(hf_config.image_size, "image_size")
            patch_height, patch_width = as_pair(hf_config.patch_size, "patch_size")
            source_grid = (height // patch_height, width // patch_width)

    source_format, prefix = detect_layout(state_dict, description, _FORMAT_MARKERS, "ViT")
    converted = apply_rename_rules(
        state_dict, prefix, _RULES[source_format], _IGNORED_HEADS[source_format]
    )
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    position_key = "embeddings.position_embeddings"
    if position_key in converted.tensors:
        table = converted.tensors[position_key]
        fitted = _position_table_for(table, source_grid, backbone.embeddings, description)
        if fitted is not table:
            resized[position_key] = (tuple(table.shape), tuple(fitted.shape))
        converted.tensors[position_key] = fitted
    return load_converted(
        backbone,
        converted,
        source_format=source_format,
        strict=strict,
        description=description,
        backbone_name="backbone",
        resized=resized,
    )


def _check_hf_config(hf_config: ViTConfig, config: PreTrainedConfig, description: str) -> None:
    differences = []
    for name in _HF_CONFIG_FIELDS:
        theirs, ours = getattr(hf_config, name), getattr(config, name)
        if name == "patch_size":
            theirs = as_pair(theirs, name)
            ours = (ours, ours)
        if theirs != ours:
            differences.append(f"{name}: checkpoint {theirs!r}, backbone {ours!r}")
    if differences:
        raise ValueError(
            f"{description} is a different ViT architecture from the backbone: "
            + "; ".join(differences)
        )
    if hf_config.layer_norm_eps != config.layer_norm_eps:
        logger.info(
            "%s: config says layer_norm_eps=%g; the backbone keeps its own %g",
            description,
            hf_config.layer_norm_eps,
            config.layer_norm_eps,
        )


def _position_table_for(
    table: torch.Tensor,
    source_grid: tuple[int, int] | None,
    embeddings: ViTEmbeddings,
    description: str,
) -> torch.Tensor:
    """The checkpoint's position table on the backbone's grid (``table`` itself if equal).

    Without ``source_grid`` the checkpoint grid is taken to be the backbone's when the
    lengths agree, else square (timm and Hub ViTs are trained on square images).
    """
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[1] < 2:
        raise ValueError(
            f"{description}: position embeddings of shape {tuple(table.shape)}, expected "
            "(1, 1 + rows * cols, hidden_size)"
        )
    num_patches = table.shape[1] - 1
    if source_grid is None:
        rows, cols = embeddings.position_grid
        side = round(num_patches**0.5)
        if num_patches == rows * cols:
            source_grid = (rows, cols)
        elif side * side == num_patches:
            source_grid = (side, side)
        else:
            raise ValueError(
                f"{description}: the position embeddings hold {num_patches} patch entries, "
                "which is neither the backbone's grid nor a square one; pass source_grid="
                "(rows, cols)"
            )
    return resize_position_embeddings(table, tuple(source_grid), embeddings.position_grid)
