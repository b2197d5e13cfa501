"""PRCT: person retrieval with a convolution-transformer.

A ResNet-50 trunk (last stride 1) turns a 256x128 crop into a 2048 x 16 x 8 map; every cell
is one part token. The part tokens get a fixed 2-D sine-cosine position code plus a learned
position embedding, a learnable embedding token is prepended (without a position), and a
Part Aggregation Transformer of pre-norm layers with multi-head *linear* attention
(Linformer, Wang et al. 2020) mixes them:

    g = flatten(T) [@ W_proj]                       (B, N, D), N = rows * cols part tokens
    x = [r; g + PE_sincos + PE_learned]             (B, n, D), n = 1 + N
    repeat num_hidden_layers times (pre-norm, as ViT):
        x = x + drop_path(attention(norm1(x)))
        x = x + drop_path(mlp(norm2(x)))
    f = layernorm(x)[:, 0]                          the embedding token, (B, D)
    f = f @ W_fc + b_fc                             optional FC layer (embedding_projection_size)

Linear attention, per head ``i`` (``Q, K, V`` of shape ``(n, d)``)::

    K' = E_i^T K,  V' = F_i^T V                     (k, d), E_i, F_i of shape (n, k)
    head_i = softmax(Q K'^T / sqrt(d)) V'           (n, d)

so a layer costs ``O(n k)`` instead of ``O(n^2)``; ``share_kv_projection=True`` uses one
``E, F`` pair for all heads of a layer. ``attention="full"`` swaps in the ViT backbone's
softmax attention (`ViTSelfAttention`) at the same width.

Inputs whose part grid differs from the configured one (another image size): the
sequence projections ``E, F`` are **resized, not sliced** (see `resize_sequence_projection`):
the embedding-token row is kept, the grid rows are viewed as a ``(rows, cols)`` image with
``heads * k`` channels and resized bilinearly (``align_corners=False``) to the new grid, then
multiplied by ``N_configured / N_new`` so each projected key or value keeps the total weight
it puts on the part tokens. The learned position embedding is resized bilinearly the same way
(without the rescaling), and the sine-cosine code is computed for the actual grid. Slicing
would drop or leave unset the rows of cells that did not exist at training time and mix up
the row-major positions when the number of columns changes; resizing keeps every row tied to
its place in the image.

Initialisation of the new parameters (``PRCTPreTrainedModel._init_weights``): linear layers,
the embedding token and the learned position embedding truncated normal with std
``initializer_range`` (0.02); ``E, F`` Xavier-normal, std ``sqrt(2 / (n + k))``, which keeps a
projected key at about the scale of the keys; the trunk's convolutions He-normal (fan-out).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput

from ...backbones.vit import (
    ViTEncoder,
    ViTLayer,
    ViTSelfAttention,
    resize_position_embeddings,
)
from ...losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from ...modeling_outputs import ReIDModelOutput
from ...modeling_utils import BNNeck, ResNetReIDPreTrainedModel
from .configuration_prct import PRCTConfig

Grid = tuple[int, int]


def sincos_position_encoding_2d(
    rows: int,
    cols: int,
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code of a ``rows x cols`` grid, ``(rows * cols, dim)``.

    Token ``t = y * cols + x`` (row-major, as the flattened feature map) sits at column
    ``x`` and row ``y`` (integers from 0). Channels ``[0, dim/2)`` encode ``x`` and
    ``[dim/2, dim)`` encode ``y``; within a half, channel ``2i`` is
    ``sin(pos / 10000^(2i / (dim/2)))`` and ``2i + 1`` is ``cos`` of the same angle. Each
    (sin, cos) pair turns by a fixed rotation when ``pos`` moves by ``k``, so relative offsets
    are linear functions of the code. Computed in float64, returned in ``dtype``.
    """
    for name, value in (("rows", rows), ("cols", cols), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (sin/cos pairs for x and y), got {dim}")
    half = dim // 2
    exponents = torch.arange(0, half, 2, dtype=torch.float64) / half  # 2i / (dim/2)
    frequencies = 1.0 / (10000.0**exponents)  # (dim/4,)
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64),
        torch.arange(cols, dtype=torch.float64),
        indexing="ij",
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * frequencies  # (N, dim/4)
        # Interleave: channel 2i = sin, 2i + 1 = cos.
        return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(len(angles), half)

    code = torch.cat((encode(x), encode(y)), dim=1)
    return code.to(device=device, dtype=dtype)


@lru_cache(maxsize=16)
def _cached_sincos(rows: int, cols: int, dim: int) -> torch.Tensor:
    # Computed on the CPU once per grid; models are built on the meta device when loaded, so
    # the code is never a buffer (it is a function of the grid, not a parameter).
    return sincos_position_encoding_2d(rows, cols, dim)


def resize_sequence_projection(
    projection: torch.Tensor, source_grid: Grid, target_grid: Grid
) -> torch.Tensor:
    """A Linformer sequence projection ``E`` (or ``F``) for another part grid.

    Args:
        projection: ``(heads, 1 + rows * cols, k)`` for ``source_grid = (rows, cols)``; row 0
            belongs to the embedding token, the others to the part tokens (row-major).
        source_grid: (rows, cols) the projection was built for.
        target_grid: (rows', cols') of the input at hand.

    Returns:
        ``(heads, 1 + rows' * cols', k)``: the embedding-token row unchanged; the grid rows,
        seen as a ``(rows, cols)`` image with ``heads * k`` channels, resized bilinearly
        (``align_corners=False``, in float32) and multiplied by
        ``(rows * cols) / (rows' * cols')`` so each projected key keeps the same total weight
        on the part tokens. The input itself when the grids are equal; differentiable.
    """
    if projection.ndim != 3:
        raise ValueError(
            f"projection must have shape (heads, 1 + rows * cols, k), got {tuple(projection.shape)}"
        )
    if tuple(source_grid) == tuple(target_grid):
        return projection
    heads, length, k = projection.shape
    table = projection.permute(1, 0, 2).reshape(1, length, heads * k)
    resized = resize_position_embeddings(table, tuple(source_grid), tuple(target_grid))
    scale = (source_grid[0] * source_grid[1]) / (target_grid[0] * target_grid[1])
    resized = torch.cat((resized[:, :1], resized[:, 1:] * scale), dim=1)
    return resized.reshape(-1, heads, k).permute(1, 0, 2)


class LinformerSelfAttention(ViTSelfAttention):
    """Multi-head linear (Linformer) attention core: keys and values are projected along the
    token axis to ``linformer_k`` rows before scaled dot-product attention.

    The fused ``qkv`` projection and the attention kernels are `ViTSelfAttention`'s (eager or
    SDPA, from ``config._attn_implementation`` at every call; the kernels take ``k`` keys for
    ``n`` queries).

    Config fields read: those of `ViTSelfAttention`, plus ``linformer_k`` and
    ``share_kv_projection``.

    Attributes:
        key_projection: ``E``, ``(heads, n, k)`` (``(1, n, k)`` when shared by all heads).
        value_projection: ``F``, same shape.
        grid: the part grid (rows, cols) ``E, F`` are built for; ``n = 1 + rows * cols``.
    """

    def __init__(self, config: PRCTConfig, grid: Grid) -> None:
        super().__init__(config)
        rows, cols = grid
        self.grid: Grid = (int(rows), int(cols))
        self.sequence_length = 1 + rows * cols
        self.linformer_k = int(config.linformer_k)
        groups = 1 if config.share_kv_projection else self.num_attention_heads
        shape = (groups, self.sequence_length, self.linformer_k)
        self.key_projection = nn.Parameter(torch.empty(shape))
        self.value_projection = nn.Parameter(torch.empty(shape))
        # Usable on its own; PRCTPreTrainedModel._init_weights draws the same distribution.
        nn.init.normal_(self.key_projection, std=self.projection_std)
        nn.init.normal_(self.value_projection, std=self.projection_std)

    @property
    def projection_std(self) -> float:
        """Xavier-normal std of ``E, F``: ``sqrt(2 / (n + k))``."""
        return math.sqrt(2.0 / (self.sequence_length + self.linformer_k))

    def sequence_projections(self, grid: Grid | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, F)`` for a part grid (the configured one by default), each
        ``(heads or 1, 1 + rows * cols, k)``; resized as `resize_sequence_projection`."""
        grid = self.grid if grid is None else (int(grid[0]), int(grid[1]))
        return (
            resize_sequence_projection(self.key_projection, self.grid, grid),
            resize_sequence_projection(self.value_projection, self.grid, grid),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: None = None,
        output_attentions: bool = False,
        grid: Grid | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend.

        Args:
            hidden_states: ``(B, n, D)``: the embedding token, then the part tokens of a
                ``grid`` row-major.
            attention_mask: must be None (keys are mixtures of tokens; a token mask has no
                meaning after the projection).
            output_attentions: return the weights ``(B, heads, n, k)``; eager only.
            grid: (rows, cols) of the part tokens; None means the configured grid.

        Returns:
            ``(context (B, n, inner_size), weights (B, heads, n, k) or None)``.
        """
        if attention_mask is not None:
            raise ValueError("linear (Linformer) attention does not take an attention_mask")
        length = hidden_states.shape[1]
        grid = self.grid if grid is None else grid
        if 1 + grid[0] * grid[1] != length:
            raise ValueError(
                f"{length} tokens do not fit a part grid of {grid[0]}x{grid[1]} plus the "
                "embedding token; pass the grid of the input"
            )
        query, key, value = self.project_qkv(hidden_states)  # (B, h, n, d) each
        key_projection, value_projection = self.sequence_projections(grid)
        # E^T K per head: (h or 1, k, n) @ (B, h, n, d) -> (B, h, k, d).
        key = key_projection.transpose(-1, -2) @ key
        value = value_projection.transpose(-1, -2) @ value
        return self.attend(query, key, value, None, output_attentions)

    def extra_repr(self) -> str:
        heads = self.key_projection.shape[0]
        return (
            f"grid={self.grid}, n={self.sequence_length}, k={self.linformer_k}, "
            f"projection_heads={heads}"
        )


class PRCTLayer(ViTLayer):
    """One pre-norm Part Aggregation Transformer layer: `ViTLayer` whose attention core is
    `LinformerSelfAttention` (``attention="linear"``; the layer then takes a ``grid=(rows,
    cols)`` keyword for inputs of other sizes) or stays `ViTSelfAttention` (``"full"``). The
    replaced full core is discarded, so no unused weights remain.
    """

    def __init__(self, config: PRCTConfig, drop_path_rate: float = 0.0, *, grid: Grid) -> None:
        super().__init__(config, drop_path_rate)
        if config.attention == "linear":
            self.attention.attention = LinformerSelfAttention(config, grid)


class PRCTPartEmbeddings(nn.Module):
    """Stage-4 map -> token sequence: optional projection, position codes, embedding token.

    Attributes:
        projection: ``Linear(C_4, hidden_size)`` applied to every cell (a 1x1 convolution
            of the map; ``C_4`` the trunk's last stage width, 2048 on ResNet-50), only when
            ``hidden_size != C_4``; else None.
        position_embeddings: learned, ``(1, rows * cols, hidden_size)`` for the configured
            grid (None without a learned encoding).
        embedding_token: ``r``, ``(1, 1, hidden_size)``.
    """

    def __init__(self, config: PRCTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.grid: Grid = config.part_grid
        self.hidden_size = dim
        self.use_sine = config.uses_sine_encoding
        channels = config.stage_channels[-1]
        self.projection = nn.Linear(channels, dim) if dim != channels else None
        self.position_embeddings = (
            nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1], dim))
            if config.uses_learned_encoding
            else None
        )
        self.embedding_token = nn.Parameter(torch.empty(1, 1, dim))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        std = config.initializer_range
        nn.init.trunc_normal_(self.embedding_token, std=std)
        if self.position_embeddings is not None:
            nn.init.trunc_normal_(self.position_embeddings, std=std)

    def learned_positions(self, grid: Grid) -> torch.Tensor:
        """The learned table ``(1, rows * cols, D)`` for ``grid``: itself on the configured
        grid, else resized bilinearly (``align_corners=False``, no rescaling)."""
        if self.position_embeddings is None:
            raise ValueError("this model has no learned position embedding")
        if tuple(grid) == self.grid:
            return self.position_embeddings
        # resize_position_embeddings keeps a leading class-token entry: give it a dummy one.
        padded = F.pad(self.position_embeddings, (0, 0, 1, 0))
        return resize_position_embeddings(padded, self.grid, tuple(grid))[:, 1:]

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C_4, rows, cols)`` -> ``(B, 1 + rows * cols, D)``: the embedding token, then
        the part tokens row-major with their positions added; dropout applied."""
        batch_size, _, rows, cols = feature_map.shape
        tokens = feature_map.flatten(2).transpose(1, 2)  # (B, N, C_4), row-major
        if self.projection is not None:
            tokens = self.projection(tokens)
        if self.use_sine:
            if torch.compiler.is_compiling() or torch.compiler.is_exporting():
                # A traced call must not leave its traced stand-in in the cache.
                code = sincos_position_encoding_2d(rows, cols, self.hidden_size)
            else:
                code = _cached_sincos(rows, cols, self.hidden_size)
            tokens = tokens + code.to(device=tokens.device, dtype=tokens.dtype)
        if self.position_embeddings is not None:
            tokens = tokens + self.learned_positions((rows, cols)).to(tokens.dtype)
        token = self.embedding_token.to(tokens.dtype).expand(batch_size, -1, -1)
        return self.dropout(torch.cat((token, tokens), dim=1))


class PartAggregationTransformer(ViTEncoder):
    """``num_hidden_layers`` `PRCTLayer` blocks (the shared `ViTEncoder` loop; stochastic
    depth rising linearly from 0 to ``drop_path_rate``) and the final LayerNorm."""

    def __init__(self, config: PRCTConfig) -> None:
        super().__init__(config, make_layer=partial(PRCTLayer, grid=config.part_grid))
        self.uses_grid = config.attention == "linear"
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        grid: Grid | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        """Run the layers on ``(B, n, D)``; ``grid`` (rows, cols) of the part tokens.

        Returns:
            ``BaseModelOutput``: ``last_hidden_state`` ``(B, n, D)`` after the final
            LayerNorm; ``hidden_states``: ``1 + num_hidden_layers`` tensors (input, then
            every layer's output, before the final norm) or None; ``attentions``: per layer
            ``(B, heads, n, k)`` (linear) or ``(B, heads, n, n)`` (full), or None.
        """
        grid_kwargs = {"grid": grid} if self.uses_grid else {}
        encoded = super().forward(
            hidden_states, None, output_hidden_states, output_attentions, **grid_kwargs
        )
        encoded.last_hidden_state = self.layernorm(encoded.last_hidden_state)
        return encoded


class PRCTPreTrainedModel(ResNetReIDPreTrainedModel):
    config_class = PRCTConfig
    base_model_prefix = "prct"
    transformer_parameter_prefixes = ("transformer.",)
    _no_split_modules = ["PRCTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LinformerSelfAttention):
            # Its bare E, F (the qkv projection is an nn.Linear child).
            init.normal_(module.key_projection, std=module.projection_std)
            init.normal_(module.value_projection, std=module.projection_std)
        else:
            super()._init_weights(module)


class PRCTModel(PRCTPreTrainedModel):
    """PRCT.

    The feature is the embedding token, or its image under the optional FC layer
    (``embedding_projection``, with ``embedding_projection_size``); ``E`` its width.

    - ``embeddings`` ``(B, E)``: the feature after the BNNeck BatchNorm, L2-normalised
      (compare by cosine / inner product).
    - ``logits``: one tensor ``(B, num_identities)`` (BNNeck classifier), when
      ``num_identities > 0``.
    - ``loss``: ``CE_LS(logits) + triplet_weight * triplet(feature before the BN)``.
    - ``features``: ``(feature before the BN,)``.
    - ``hidden_states``: the transformer's (input + each layer), with ``output_hidden_states``;
      ``attentions`` with ``output_attentions`` (eager attention only).

    Inputs of other sizes run: see the module docstring for the resized parameters.
    """

    def __init__(self, config: PRCTConfig) -> None:
        super().__init__(config)
        self.embeddings = PRCTPartEmbeddings(config)
        self.transformer = PartAggregationTransformer(config)
        self.embedding_projection = (
            nn.Linear(config.hidden_size, config.embedding_projection_size)
            if config.embedding_projection_size is not None
            else None
        )
        self.neck = BNNeck(config.embedding_size, config.num_identities)
        self.post_init()

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool, **kwargs,
    ) -> ReIDModelOutput:
        config = self.config
        feature_map = self.resnet(pixel_values)[-1]  # (B, C_4, rows, cols)
        grid = (int(feature_map.shape[-2]), int(feature_map.shape[-1]))
        encoded = self.transformer(
            self.embeddings(feature_map),
            grid=grid,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        feature = encoded.last_hidden_state[:, 0]  # the embedding token, (B, D)
        if self.embedding_projection is not None:
            feature = self.embedding_projection(feature)  # (B, embedding_projection_size)
        normed, head_logits = self.neck(feature)
        embeddings = F.normalize(normed, dim=-1)
        logits = (head_logits,) if head_logits is not None else None

        loss = None
        if labels is not None:
            loss = cross_entropy_with_label_smoothing(
                head_logits, labels, config.label_smoothing
            ) + config.triplet_weight * batch_hard_triplet_loss(
                feature, labels, config.triplet_margin
            )

        return ReIDModelOutput(
            embeddings=embeddings,
            pooler_output=embeddings,
            loss=loss,
            logits=logits,
            features=(feature,),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
