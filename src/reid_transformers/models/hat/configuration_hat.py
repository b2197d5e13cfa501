"""HAT configuration."""

from __future__ import annotations

from ...configuration_utils import ReIDConfig, as_pair, check_choice, check_positive, check_range

TFC_NORMS = ("pre", "post")


class HATConfig(ReIDConfig):
    """Hierarchical Aggregation Transformers on a ResNet-50 trunk.

    Levels ``s = 1, 2, 3`` are the outputs of ResNet stages 1-3 ("Res2".."Res4", 256, 512 and
    1024 channels). Each level is refined by ``bottleneck_depth`` bottleneck blocks, scaled to
    the common grid (``ceil(H / scale_factor) x ceil(W / scale_factor)``, 16x8 at 256x128),
    concatenated with the previous level's calibrated map and passed through its
    Transformer-based Feature Calibration (TFC).

    Args:
        image_size: input ``(height, width)``; 256x128 in the paper.
        last_stride: stride of the trunk's last stage (1: stage 4 at 1/16 resolution).
        frozen_batch_norm: keep the trunk's BatchNorms frozen (eval mode, fixed affine).
        bottleneck_depth: channel-preserving bottleneck blocks per level before scaling (3).
        scale_factor: the common grid is the input size divided by this (rounded up), i.e. the
            stage-3 map for 16. Larger levels are max-pooled down, smaller ones upsampled
            bilinearly.
        tfc_depths: transformer layers of TFC_1..TFC_3; 0 skips that level (no bottleneck, no
            TFC, no head; the next level consumes the last calibrated map before it). At least
            one must be positive.
        tfc_hidden_sizes: token width ``C_out`` of each TFC (256, 768, 2048); multiples of 4
            (the Neighbourhood Adjustment is a bottleneck of width ``C_out / 4``).
        tfc_num_heads: attention heads per TFC layer (16).
        tfc_head_dim: width of each head (64), independent of ``C_out``.
        tfc_intermediate_size: feed-forward width (2048).
        tfc_dropout: dropout on token embeddings, attention weights and layer outputs (0.1).
        tfc_norm: ``"pre"`` (released code: pre-norm layers, no final LayerNorm) or ``"post"``
            (paper: LayerNorm after each residual addition).
        tfc_hidden_act: feed-forward activation (a transformers ``ACT2FN`` name).
        layer_norm_eps: of the TFC LayerNorms.
        label_smoothing: of every identity cross-entropy.
        triplet_margin: batch-hard triplet margin; ``None`` for the soft margin.
        aux_lambda: weight of the auxiliary levels' losses (every TFC level but the last).
    """

    model_type = "hat"

    image_size: int | list[int] | tuple[int, int] = (256, 128)
    num_channels: int = 3
    last_stride: int = 1
    frozen_batch_norm: bool = False
    bottleneck_depth: int = 3
    scale_factor: int = 16
    tfc_depths: list[int] | tuple[int, ...] = (3, 3, 6)
    tfc_hidden_sizes: list[int] | tuple[int, ...] = (256, 768, 2048)
    tfc_num_heads: int = 16
    tfc_head_dim: int = 64
    tfc_intermediate_size: int = 2048
    tfc_dropout: float | int = 0.1
    tfc_norm: str = "pre"
    tfc_hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    aux_lambda: float | int = 0.5

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        self.tfc_depths = _int_tuple(self.tfc_depths, "tfc_depths", minimum=0)
        self.tfc_hidden_sizes = _int_tuple(self.tfc_hidden_sizes, "tfc_hidden_sizes", minimum=4)
        if not any(self.tfc_depths):
            raise ValueError(f"tfc_depths needs at least one positive depth, got {self.tfc_depths}")
        if any(size % 4 for size in self.tfc_hidden_sizes):
            raise ValueError(
                f"tfc_hidden_sizes must be multiples of 4, got {self.tfc_hidden_sizes}"
            )
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride!r}")
        check_positive(
            self,
            "num_channels",
            "bottleneck_depth",
            "scale_factor",
            "tfc_num_heads",
            "tfc_head_dim",
            "tfc_intermediate_size",
        )
        check_choice(self, "tfc_norm", TFC_NORMS)
        check_range(self, "tfc_dropout", 0.0, 1.0, high_inclusive=False)
        check_range(self, "label_smoothing", 0.0, 1.0, high_inclusive=False)
        check_range(self, "layer_norm_eps", 0.0, 1.0)
        if self.triplet_margin is not None and self.triplet_margin <= 0:
            raise ValueError(
                f"triplet_margin must be > 0 or None (soft margin), got {self.triplet_margin!r}"
            )
        if (
            isinstance(self.aux_lambda, bool)
            or not isinstance(self.aux_lambda, (int, float))
            or self.aux_lambda < 0
        ):
            raise ValueError(f"aux_lambda must be a number >= 0, got {self.aux_lambda!r}")
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is below the trunk's 32-pixel stride")
        super().__post_init__(**kwargs)

    @property
    def active_levels(self) -> tuple[int, ...]:
        """0-based indices of the levels with a TFC (``tfc_depths[s] > 0``)."""
        return tuple(s for s, depth in enumerate(self.tfc_depths) if depth)


def _int_tuple(value: object, name: str, minimum: int) -> tuple[int, int, int]:
    """Three ints ``>= minimum`` (one per level), or a ValueError naming ``name``."""
    items = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(items) != 3 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items
    ):
        raise ValueError(f"{name} must be three integers >= {minimum} (levels 1-3), got {value!r}")
    return items
