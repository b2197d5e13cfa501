"""HAT configuration."""

from __future__ import annotations

from ...configuration_utils import ATTENTION_SCALES, ResNetReIDConfig, as_int_tuple

TFC_NORMS = ("pre", "post")


class HATConfig(ResNetReIDConfig):
    """Hierarchical Aggregation Transformers on a ResNet trunk (ResNet-50 by default).

    Levels ``s = 1, 2, 3`` are the outputs of ResNet stages 1-3 ("Res2".."Res4", 256, 512 and
    1024 channels on ResNet-50); a fourth level, the stage-4 map ("Res5", 2048 channels), is
    an ablation. The trunk fields (``depths``, ``hidden_sizes``, ``layer_type``,
    ``stem_channels``, ``stem_activation``, ``num_channels``, ``frozen_batch_norm``) are those
    of `ResNetReIDConfig`; the released code's stem has no ReLU after ``bn1``:
    ``stem_activation=False`` reproduces it (default True, torchvision's ResNet-50 whose
    ImageNet weights the trunk loads) [released code for False].
    Each level is refined by ``bottleneck_depth`` bottleneck blocks, scaled to the common grid
    (``ceil(H / scale_factor) x ceil(W / scale_factor)``, 16x8 at 256x128), concatenated with
    the previous level's calibrated map and passed through its Transformer-based Feature
    Calibration (TFC). Sources: [paper], [released code] or [our choice].

    Args:
        image_size: input ``(height, width)``; 256x128. [paper]
        last_stride: stride of the trunk's last stage: 1 (stage 4 at 1/16 resolution, the
            re-ID convention) [our choice], or 2 as the released code's YAML runs (there it
            only changes ``GAP(X_4)``; here also a fourth level, which is then upsampled).
        bottleneck_depth: channel-preserving bottleneck blocks per level before scaling (3).
            [paper]
        scale_factor: the common grid is the input size divided by this (rounded up), i.e. the
            stage-3 map for 16. Larger levels are max-pooled down, smaller ones upsampled
            bilinearly. [paper: 16x8]
        tfc_depths: transformer layers of TFC_1..TFC_3 ``(3, 3, 6)`` [paper]; four values add
            the stage-4 map as a fourth level (the paper's "Res5" ablation). 0 skips that level
            (no bottleneck, no TFC, no head; the next level consumes the last calibrated map
            before it). At least one must be positive.
        tfc_hidden_sizes: token width ``C_out`` of each TFC ``(256, 768, 2048)`` [paper], one
            per entry of ``tfc_depths``; multiples of 4 (the Neighbourhood Adjustment is a
            bottleneck of width ``C_out / 4``).
        tfc_num_heads: attention heads per TFC layer (16). [released code]
        tfc_head_dim: width of each head (64), independent of ``C_out``. [released code]
        tfc_intermediate_size: feed-forward width (2048). [released code]
        tfc_dropout: dropout (0.1) on the token embeddings, after the feed-forward
            activation, after its second linear layer and after the attention output
            projection. [released code]
        tfc_attention_dropout: dropout on the attention weights (0: the released code has
            none). [released code]
        attention_scale: factor of the attention logits, ``"width"`` (``C_out ** -0.5``: 1/16,
            1/27.7, 1/45.3 at widths 256, 768, 2048) [released code] or ``"head_dim"``
            (``tfc_head_dim ** -0.5`` = 1/8) [paper notation].
        tfc_token_init_std: standard deviation of the normal init of each TFC's class token
            and position table (1.0, ``torch.randn``) [released code]; 0.02 is the ViT
            convention.
        tfc_norm: ``"pre"`` (pre-norm layers, no final LayerNorm) [released code] or ``"post"``
            (LayerNorm after each residual addition) [paper].
        tfc_hidden_act: feed-forward activation (a transformers ``ACT2FN`` name; ``"gelu"``).
            [released code]
        neighbourhood_adjustment: pass each non-final level's patch map through a bottleneck
            (Neighbourhood Adjustment) before the next level (True) [paper]; False feeds the
            reshaped patch tokens on directly (the paper's ablation).
        layer_norm_eps: of the TFC LayerNorms (1e-5, PyTorch's default). [released code]
        label_smoothing: of every identity cross-entropy (0.1). [released code]
        triplet_margin: batch-hard triplet margin (0.3); ``None`` for the soft margin.
            [released code]
        aux_lambda: weight of the auxiliary levels' losses (every TFC level but the last;
            0.5) [paper]. 0 turns deep supervision off: the auxiliary levels then have no
            BNNeck or classifier at all (nothing would train them), and ``logits`` /
            ``features`` hold only the global and the final level's. [our choice]
    """

    model_type = "hat"

    bottleneck_depth: int = 3
    scale_factor: int = 16
    tfc_depths: list[int] | tuple[int, ...] = (3, 3, 6)
    tfc_hidden_sizes: list[int] | tuple[int, ...] = (256, 768, 2048)
    tfc_num_heads: int = 16
    tfc_head_dim: int = 64
    tfc_intermediate_size: int = 2048
    tfc_dropout: float | int = 0.1
    tfc_attention_dropout: float | int = 0.0
    attention_scale: str = "width"
    tfc_token_init_std: float | int = 1.0
    tfc_norm: str = "pre"
    tfc_hidden_act: str = "gelu"
    neighbourhood_adjustment: bool = True
    layer_norm_eps: float = 1e-5
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    aux_lambda: float | int = 0.5

    def __post_init__(self, **kwargs) -> None:
        for name, minimum in (("tfc_depths", 0), ("tfc_hidden_sizes", 4)):
            value = as_int_tuple(
                getattr(self, name), name, lengths=(3, 4), minimum=minimum,
                expected=f"three or four integers >= {minimum} (levels 1-3, or 1-4 with the "
                "stage-4 map as a fourth level)",
            )
            setattr(self, name, value)
        if len(self.tfc_hidden_sizes) != len(self.tfc_depths):
            raise ValueError(
                f"tfc_hidden_sizes {self.tfc_hidden_sizes} must have one width per level of "
                f"tfc_depths {self.tfc_depths}"
            )
        if not any(self.tfc_depths):
            raise ValueError(f"tfc_depths needs at least one positive depth, got {self.tfc_depths}")
        if any(size % 4 for size in self.tfc_hidden_sizes):
            raise ValueError(
                f"tfc_hidden_sizes must be multiples of 4, got {self.tfc_hidden_sizes}"
            )
        self.check_positive(
            "bottleneck_depth", "scale_factor", "tfc_num_heads", "tfc_head_dim",
            "tfc_intermediate_size",
        )
        self.check_choice("tfc_norm", TFC_NORMS)
        self.check_choice("attention_scale", ATTENTION_SCALES)
        self.check_activation("tfc_hidden_act")
        self.check_probability("tfc_dropout", "tfc_attention_dropout", "label_smoothing")
        self.check_non_negative("tfc_token_init_std", "aux_lambda")
        self.check_bool("neighbourhood_adjustment")
        self.check_range("layer_norm_eps", 0.0, 1.0)
        self.check_positive_number("triplet_margin", none_means="soft margin")
        super().__post_init__(**kwargs)
        # Each level's bottlenecks have inner width C / 4 and must give back C channels.
        odd = [self.stage_channels[level] for level in self.active_levels
               if self.stage_channels[level] % 4]
        if odd:
            raise ValueError(
                f"hidden_sizes {self.hidden_sizes}: the trunk stages HAT reads (levels "
                f"{[level + 1 for level in self.active_levels]}) need widths divisible by 4 "
                f"(bottleneck inner width C / 4), got {odd}"
            )
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is below the trunk's 32-pixel stride")

    @property
    def active_levels(self) -> tuple[int, ...]:
        """0-based indices of the levels with a TFC (``tfc_depths[s] > 0``)."""
        return tuple(s for s, depth in enumerate(self.tfc_depths) if depth)

