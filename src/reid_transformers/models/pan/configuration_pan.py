"""PAN configuration."""

from __future__ import annotations

from ...configuration_utils import ReIDConfig, as_pair, check_choice, check_positive, check_range

FUSIONS = ("concat", "add")


class PANConfig(ReIDConfig):
    """Part-aware Attention Network on a ResNet-50 trunk.

    Args:
        image_size: input ``(height, width)``; 384x128 in the paper.
        last_stride: stride of the trunk's last stage (1: stage 4 at 1/16 resolution).
        frozen_batch_norm: keep the trunk's BatchNorms frozen (eval mode, fixed affine).
        part_scales: granularities of the part-feature learning module; ``(1, 2, 3)`` gives
            ``1 + 2 + 3 = 6`` parts.
        spatial_hidden_size: width of each scale's spatial-attention branch (256).
        channel_reduction: reduction of the squeeze-and-excitation channel attention (16).
        pam_dim: ``D`` of the part-aware attention projections (256).
        fusion: ``"concat"`` (PAN_c: ``[P; Z1; Z2; Z3]``, 3840-d) or ``"add"`` (PAN_a: every
            ``Z`` projected to 2048 and summed with ``P``).
        embedding_size: per-part embedding width (256).
        label_smoothing: of the per-part identity cross-entropies.
        triplet_margin: batch-hard triplet margin on the concatenated part embeddings;
            ``None`` for the soft margin.
        triplet_weight: ``lambda1`` (1).
        orthogonal_weight: ``lambda2`` of the mask orthogonality regulariser (1e-3).
    """

    model_type = "pan"

    image_size: int | list[int] | tuple[int, int] = (384, 128)
    num_channels: int = 3
    last_stride: int = 1
    frozen_batch_norm: bool = False
    part_scales: list[int] | tuple[int, ...] = (1, 2, 3)
    spatial_hidden_size: int = 256
    channel_reduction: int = 16
    pam_dim: int = 256
    fusion: str = "concat"
    embedding_size: int = 256
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    triplet_weight: float | int = 1.0
    orthogonal_weight: float | int = 1e-3

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        scales = tuple(self.part_scales)
        if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                             for s in scales):
            raise ValueError(f"part_scales must be positive part counts like (1, 2, 3), got "
                             f"{self.part_scales!r}")
        self.part_scales = scales
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride!r}")
        check_positive(self, "num_channels", "spatial_hidden_size", "channel_reduction",
                       "pam_dim", "embedding_size")
        check_choice(self, "fusion", FUSIONS)
        check_range(self, "label_smoothing", 0.0, 1.0, high_inclusive=False)
        if self.triplet_margin is not None and self.triplet_margin <= 0:
            raise ValueError(
                f"triplet_margin must be > 0 or None (soft margin), got {self.triplet_margin!r}"
            )
        for name in ("triplet_weight", "orthogonal_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is below the trunk's 32-pixel stride")
        super().__post_init__(**kwargs)

    @property
    def num_parts(self) -> int:
        """Parts over all scales: the sum of ``part_scales``."""
        return sum(self.part_scales)
