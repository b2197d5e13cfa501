"""PRCT configuration."""

from __future__ import annotations

from ...backbones.resnet import feature_grid
from ...configuration_utils import ResNetReIDConfig, TransformerReIDConfig

#: Attention of the Part Aggregation Transformer.
ATTENTIONS = ("linear", "full")
#: Position codes added to the part tokens.
POSITION_ENCODINGS = ("sine+learned", "sine", "learned", "none")


class PRCTConfig(ResNetReIDConfig, TransformerReIDConfig):
    """PRCT: a ResNet trunk (ResNet-50 by default) whose stage-4 cells are part tokens,
    aggregated by a Linformer-style transformer into a learnable embedding token.

    There is no released code; sources are the paper or our choices. The trunk fields
    (``depths``, ``hidden_sizes``, ``layer_type``, ``stem_channels``, ``stem_activation``)
    are those of `ResNetReIDConfig`.

    Args:
        image_size: input ``(height, width)``, 256x128 [paper]. It fixes the part grid the
            length-dependent parameters are built for (16x8 = 128 parts at 256x128 with last
            stride 1); other input sizes still run (see ``modeling_prct``).
        last_stride: stride of the trunk's last stage: 1 (stage 4 at 1/16 resolution, the
            16x8 grid) [paper]; 2: 1/32.
        frozen_batch_norm: keep the trunk's BatchNorms frozen (eval mode, fixed affine);
            ``False`` [our choice: the fast-reid recipe trains them].
        hidden_size: width ``D`` of the part tokens and of the transformer, 2048: the trunk's
            channels as they are [paper]. Any value other than the trunk's last stage width
            (``hidden_sizes[-1]``) adds a linear map to ``hidden_size`` of every stage-4 cell
            [our choice: an option, the paper does not project]. Must be divisible by
            ``num_attention_heads`` and, when a sine-cosine code is used, by 4 (two halves of
            sine/cosine pairs).
        num_hidden_layers: layers of the Part Aggregation Transformer, 12 [paper]; the
            paper's "1 layer" ablation is 1.
        num_attention_heads: heads per layer, 8 [paper]; the "1 head" ablation is 1.
        intermediate_size: hidden width of the GELU feed-forward, 2048, the hidden size
            [our choice: the paper gives none].
        hidden_act: feed-forward activation (a transformers ``ACT2FN`` name), GELU
            [our choice, as ViT].
        layer_norm_eps: epsilon of the pre-norm and final LayerNorms, 1e-6 [our choice: the
            timm / ViT value, as in the other transformers of this package].
        qkv_bias: bias of the fused query/key/value projection [our choice, as ViT].
        hidden_dropout_prob: dropout on the token sequence after the position codes, after
            each attention output projection and in each feed-forward, 0.1 [our choice: the
            paper names no dropout; 0.1 is the usual transformer rate].
        attention_probs_dropout_prob: dropout on the attention weights, 0.1 [our choice, the
            same rate].
        drop_path_rate: stochastic depth, rising linearly from 0 at the first layer to this
            rate at the last; 0 [our choice: the paper names none].
        attention_scale: factor of the attention logits, ``"head_dim"`` (``head_dim ** -0.5``,
            the usual transformer temperature) [our choice: the paper gives none] or
            ``"width"`` (``hidden_size ** -0.5``).
        attention: ``"linear"`` (Linformer: keys and values projected along the token axis
            to ``linformer_k`` rows before the softmax) [paper] or ``"full"`` (plain softmax
            attention over all tokens, for comparison) [our choice].
        linformer_k: ``k``, the projected sequence length of keys and values, 64 [our
            choice: the paper gives no value].
        share_kv_projection: ``True``: one ``E`` and one ``F`` (each ``n x k``) shared by all
            heads of a layer (Linformer's "headwise sharing"); ``False`` (default): one
            ``E_i, F_i`` pair per head, as multi-head linear attention reads [paper].
        position_encoding: ``"sine+learned"``: fixed 2-D sine-cosine code plus a learnable
            position embedding [paper]; ``"sine"``, ``"learned"`` [our choice] or ``"none"``
            (the "no PE" ablation) [paper].
        embedding_projection_size: width of a fully connected layer between the embedding
            token and the BNNeck, or ``None`` (default): no such layer, the BNNeck sits on
            the token [our choice]. Section 3.1 of the paper "connects the FC layer and the
            classifier" to the token without giving the layer's width or activation, which
            also reads as the BNNeck's classifier itself (a fully connected layer); the
            training follows fast-reid's bag of tricks, whose head has no further layer.
            With a size, the layer (``Linear(hidden_size, size)``, no activation) gives the
            feature: the triplet loss sees its output, the BNNeck and the classifier follow
            it, and the embedding has this size [paper's FC layer, our reading].
        label_smoothing: of the identity cross-entropy, 0.1 [paper: fast-reid's recipe].
        triplet_margin: batch-hard triplet margin, 0.3 [paper: fast-reid's recipe]; ``None``
            for the soft margin.
        triplet_weight: weight of the triplet term, 1 [our choice: fast-reid's default].

    Other fields: see `ResNetReIDConfig` and `TransformerReIDConfig` (``activation_dropout``
    0, no dropout after the feed-forward activation [our choice, as ViT]).
    """

    model_type = "prct"

    hidden_size: int = 2048
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    attention: str = "linear"
    linformer_k: int = 64
    share_kv_projection: bool = False
    position_encoding: str = "sine+learned"
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    triplet_weight: float | int = 1.0
    embedding_projection_size: int | None = None

    def __post_init__(self, **kwargs) -> None:
        self.check_bool("share_kv_projection")
        self.check_positive("linformer_k")
        self.check_choice("attention", ATTENTIONS)
        self.check_choice("position_encoding", POSITION_ENCODINGS)
        self.check_probability("label_smoothing")
        self.check_positive_number("triplet_margin", none_means="soft margin")
        self.check_non_negative("triplet_weight")
        if self.embedding_projection_size is not None:
            self.check_positive("embedding_projection_size")
        super().__post_init__(**kwargs)
        if self.uses_sine_encoding and self.hidden_size % 4:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by 4 for the 2-D "
                f"sine-cosine position code (position_encoding={self.position_encoding!r})"
            )
        if min(self.image_size) < self.trunk_stride:
            raise ValueError(
                f"image_size {self.image_size} is below the trunk's {self.trunk_stride}-pixel "
                f"stride (last_stride={self.last_stride})"
            )

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
    def embedding_size(self) -> int:
        """Width of the feature the BNNeck sees and of the retrieval embedding."""
        return self.embedding_projection_size or self.hidden_size

    @property
    def uses_sine_encoding(self) -> bool:
        return self.position_encoding in ("sine+learned", "sine")

    @property
    def uses_learned_encoding(self) -> bool:
        return self.position_encoding in ("sine+learned", "learned")
