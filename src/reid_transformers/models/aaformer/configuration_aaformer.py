"""AAformer configuration."""

from __future__ import annotations

from ...configuration_utils import ViTReIDConfig, check_choice, check_range
from .optimal_transport import ASSIGNMENT_METHODS


class AAformerConfig(ViTReIDConfig):
    """Auto-Aligned Transformer (Zhu et al., IEEE TNNLS 2023) on a ViT backbone.

    Args:
        part_granularities: parts per granularity group; ``(2, 3)`` gives 5 [PART] tokens,
            two splitting the patches in two, three splitting them in three.
        assignment: ``"optimal_transport"`` (Sinkhorn-Knopp, the paper) or ``"nearest"``
            (each patch to its highest-scoring part, the paper's ablation).
        ot_epsilon: entropy of the transport problem.
        ot_iterations: Sinkhorn-Knopp iterations.
        label_smoothing: cross-entropy smoothing of the identity heads.
        triplet_margin: batch-hard triplet margin; ``None`` for the soft margin.
        triplet_weight: weight of ``triplet(CLS) + triplet(concatenated parts)``.

    Defaults: 256x128 input, stride-16 patches (128 patches), drop-path 0.1.
    Other fields: see :class:`~reid_transformers.configuration_utils.ViTReIDConfig`.
    """

    model_type = "aaformer"

    drop_path_rate: float | int = 0.1
    part_granularities: list[int] | tuple[int, ...] = (2, 3)
    assignment: str = "optimal_transport"
    ot_epsilon: float | int = 0.05
    ot_iterations: int = 3
    label_smoothing: float | int = 0.1
    triplet_margin: float | int | None = 0.3
    triplet_weight: float | int = 0.5

    def __post_init__(self, **kwargs) -> None:
        granularities = tuple(self.part_granularities)
        if not granularities or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in granularities
        ):
            raise ValueError(
                f"part_granularities must be positive part counts like (2, 3), got "
                f"{self.part_granularities!r}"
            )
        self.part_granularities = granularities
        check_choice(self, "assignment", ASSIGNMENT_METHODS)
        if not isinstance(self.ot_epsilon, (int, float)) or self.ot_epsilon <= 0:
            raise ValueError(f"ot_epsilon must be > 0, got {self.ot_epsilon!r}")
        if (
            isinstance(self.ot_iterations, bool)
            or not isinstance(self.ot_iterations, int)
            or self.ot_iterations < 1
        ):
            raise ValueError(f"ot_iterations must be an integer >= 1, got {self.ot_iterations!r}")
        check_range(self, "label_smoothing", 0.0, 1.0, high_inclusive=False)
        if self.triplet_margin is not None and self.triplet_margin <= 0:
            raise ValueError(
                f"triplet_margin must be > 0 or None (soft margin), got {self.triplet_margin!r}"
            )
        if self.triplet_weight < 0:
            raise ValueError(f"triplet_weight must be >= 0, got {self.triplet_weight!r}")
        super().__post_init__(**kwargs)

    @property
    def num_parts(self) -> int:
        """[PART] tokens: the sum of the granularities."""
        return sum(self.part_granularities)
