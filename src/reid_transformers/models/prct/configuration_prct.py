"""PRCT configuration."""

from __future__ import annotations

from ...backbones.resnet import RESNET50_STAGE_CHANNELS, feature_grid
from ...configuration_utils import ReIDConfig, as_pair, check_choice, check_positive, check_range

#: Attention of the Part Aggregation Transformer.
ATTENTIONS = ("linear", "full")
#: Position codes added to the part tokens.
POSITION_ENCODINGS = ("sine+learned", "sine", "learned", "none")
#: Channels of the ResNet-50 stage-4 map (the part tokens before the optional projection).
TRUNK_CHANNELS = RESNET50_STAGE_CHANNELS[-1]


class PRCTConfig(ReIDConfig):
    """PRCT: a ResNet-50 trunk whose stage-4 cells are part tokens, aggregated by a
    Linformer-style transformer into a learnable embedding token (ARCHITECTURES.md section 5).

    Args:
        image_size: input ``(height, width)``; 256x128 in the paper. It fixes the part grid
            the length-dependent parameters are built for (16x8 = 128 parts at 256x128 with
            last stride 1); other input sizes still run (see ``modeling_prct``).
        num_channels: input channels.
        last_stride: stride of the trunk's last stage (1: stage 4 at 1/16 resolution, the
            paper's 16x8 grid; 2: 1/32).
        frozen_batch_norm: keep the trunk's BatchNorms frozen (eval mode, fixed affine).
        hidden_size: width ``D`` of the part tokens and of the transformer. The paper uses the
            trunk's 2048 channels as they are; any other value adds the optional projection,
            a linear map ``2048 -> hidden_size`` of every stage-4 cell (created only when
            ``hidden_size != 2048``). Must be divisible by ``num_attention_heads`` and, when a
            sine-cosine code is used, by 4 (two halves of sine/cosine pairs).
        num_hidden_layers: layers of the Part Aggregation Transformer (12; the paper's
            "1 layer" ablation is 1).
        num_attention_heads: heads per layer (8; the "1 head" ablation is 1).
        intermediate_size: hidden width of the GELU feed-forward (2048, the hidden size).
        hidden_act: feed-forward activation (a transformers ``ACT2FN`` name).
        layer_norm_eps: epsilon of the pre-norm and final LayerNorms (1e-6, the timm / ViT
            value, as in the other transformers of this package).
        qkv_bias: bias of the fused query/key/value projection.
        hidden_dropout_prob: dropout on the token sequence after the position codes, after
            each attention output projection and in each feed-forward (the paper's 0.1).
        attention_probs_dropout_prob: dropout on the attention weights (0.1, the same rate;
            the paper names a single dropout of 0.1).
        drop_path_rate: stochastic depth, rising linearly from 0 at the first layer to this
            rate at the last (0, the paper has none).
        attention: ``"linear"`` (Linformer: keys and values projected along the token axis
            to ``linformer_k`` rows before the softmax; the paper) or ``"full"`` (plain
            softmax attention over all tokens, for comparison).
        linformer_k: ``k``, the projected sequence length of keys and values (64).
        share_kv_projection: ``True``: one ``E`` and one ``F`` (each ``n x k``) shared by all
            heads of a layer (Linformer's "headwise sharing"); ``False`` (default): one
            ``E_i, F_i`` pair per head.
        position_encoding: ``"sine+learned"`` (the paper: fixed 2-D sine-cosine code plus a
            learnable position embedding), ``"sine"``, ``"learned"`` or ``"none"`` (the
            "no PE" ablation).
        label_smoothing: of the identity cross-entropy (0.1).
        triplet_margin: batch-hard triplet margin (0.3); ``None`` for the soft margin.
        triplet_weight: weight of the triplet term (1).
    """

    model_type = "prct"

    image_size: int | list[int] | tuple[int, int] = (256, 128)
    num_channels: int = 3
    last_stride: int = 1
    frozen_batch_norm: bool = False
    hidden_size: int = TRUNK_CHANNELS
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    drop_path_rate: float | int = 0.0
    attention: str = "linear"
    linformer_k: int = 64
    share_kv_projection: bool = False
    position_encoding: str = "sine+learned"
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    triplet_weight: float | int = 1.0

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        if isinstance(self.last_stride, bool) or self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride!r}")
        for name in ("frozen_batch_norm", "qkv_bias", "share_kv_projection"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_positive(
            self,
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "linformer_k",
        )
        check_choice(self, "attention", ATTENTIONS)
        check_choice(self, "position_encoding", POSITION_ENCODINGS)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.uses_sine_encoding and self.hidden_size % 4:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by 4 for the 2-D "
                f"sine-cosine position code (position_encoding={self.position_encoding!r})"
            )
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"hidden_act must be an activation name, got {self.hidden_act!r}")
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "drop_path_rate",
            "label_smoothing",
        ):
            check_range(self, name, 0.0, 1.0, high_inclusive=False)
        check_range(self, "layer_norm_eps", 0.0, 1.0)
        if self.triplet_margin is not None and not self.triplet_margin > 0:
            raise ValueError(
                f"triplet_margin must be > 0 or None (soft margin), got {self.triplet_margin!r}"
            )
        if not self.triplet_weight >= 0:
            raise ValueError(f"triplet_weight must be >= 0, got {self.triplet_weight!r}")
        if min(self.image_size) < self.trunk_stride:
            raise ValueError(
                f"image_size {self.image_size} is below the trunk's {self.trunk_stride}-pixel "
                f"stride (last_stride={self.last_stride})"
            )
        super().__post_init__(**kwargs)

    @property
    def trunk_stride(self) -> int:
        """Pixels per stage-4 cell: 16 with last stride 1, 32 with 2."""
        return 16 if self.last_stride == 1 else 32

    @property
    def part_grid(self) -> tuple[int, int]:
        """(rows, cols) of the stage-4 map at ``image_size``: ``ceil(H / s), ceil(W / s)``
        with ``s`` = :attr:`trunk_stride` (16x8 at 256x128, last stride 1)."""
        return feature_grid(*self.image_size, self.trunk_stride)

    @property
    def num_tokens(self) -> int:
        """``n = 1 + rows * cols``: the embedding token plus one token per part (129)."""
        rows, cols = self.part_grid
        return 1 + rows * cols

    @property
    def uses_sine_encoding(self) -> bool:
        return self.position_encoding in ("sine+learned", "sine")

    @property
    def uses_learned_encoding(self) -> bool:
        return self.position_encoding in ("sine+learned", "learned")
