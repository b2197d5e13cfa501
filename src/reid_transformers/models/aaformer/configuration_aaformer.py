"""AAformer configuration."""

from __future__ import annotations

from ...configuration_utils import ViTReIDConfig, check_choice, check_range
from .optimal_transport import ASSIGNMENT_METHODS

#: Score-based assignments (``ASSIGNMENT_METHODS``) plus the two fixed ones of Table IV.
ASSIGNMENTS = (*ASSIGNMENT_METHODS, "stripes", "none")


class AAformerConfig(ViTReIDConfig):
    """Auto-Aligned Transformer (Zhu et al., IEEE TNNLS 2023) on a ViT backbone.

    There is no released code; sources are the paper or our choices.

    Args:
        part_granularities: parts per granularity group; ``(2, 3)`` gives 5 [PART] tokens,
            two splitting the patches in two, three splitting them in three [paper].
        assignment: how each [PART] token gets the patches it attends to, in every layer:

            - ``"optimal_transport"`` (default): per image, head and group, Sinkhorn-Knopp on
              the part-to-patch scores, each patch to its best part [paper].
            - ``"nearest"``: each patch to its highest-scoring part, without transport (the
              paper's nearest-neighbour ablation) [paper].
            - ``"stripes"``: fixed PCB-style horizontal stripes: the ``P_g`` parts of a group
              split the patch rows into ``P_g`` contiguous stripes (row ``r`` of ``R`` goes
              to part ``floor(r * P_g / R)``), the same for every image, head and layer (the
              paper's fixed-partition ablation, Table IV) [paper; the split rule is our
              choice].
            - ``"none"``: no alignment: every [PART] query attends to all tokens, like extra
              class tokens (the paper's "6 x CLS" baseline, Table IV) [paper].
        parts_visible_to_all: ``False`` (default): [CLS] and patch queries do not see the
            [PART] tokens, so the backbone computes exactly a plain ViT [our choice].
            ``True``: they attend to the [PART] tokens too, as Eq. 1's attention over all
            ``1 + P + N`` tokens admits [paper].
        ot_epsilon: entropy of the transport problem, 0.05 [paper].
        ot_iterations: Sinkhorn-Knopp iterations, 3 [paper].
        label_smoothing: cross-entropy smoothing of the identity heads, 0.1 [paper].
        triplet_margin: batch-hard triplet margin, 0.3 [paper]; ``None`` for the soft margin.
        triplet_weight: weight of ``triplet(CLS) + triplet(concatenated parts)``, 0.5 [paper].
        image_size: input ``(height, width)``, 256x128 [paper].
        drop_path_rate: stochastic depth rising linearly to this rate, 0.1 [paper].

    Other fields: see :class:`~reid_transformers.configuration_utils.ViTReIDConfig` (ViT-B/16,
    stride-16 patches: 128 patches at 256x128 [paper]).
    """

    model_type = "aaformer"

    drop_path_rate: float | int = 0.1
    part_granularities: list[int] | tuple[int, ...] = (2, 3)
    assignment: str = "optimal_transport"
    parts_visible_to_all: bool = False
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
        check_choice(self, "assignment", ASSIGNMENTS)
        if not isinstance(self.parts_visible_to_all, bool):
            raise ValueError(
                f"parts_visible_to_all must be a bool, got {self.parts_visible_to_all!r}"
            )
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
        if self.assignment == "stripes" and self.num_patch_rows < max(granularities):
            raise ValueError(
                f"assignment='stripes' needs at least as many patch rows as parts in a group: "
                f"image_size {self.image_size} has {self.num_patch_rows} rows, "
                f"part_granularities {granularities} need {max(granularities)}"
            )

    @property
    def num_parts(self) -> int:
        """[PART] tokens: the sum of the granularities."""
        return sum(self.part_granularities)

    @property
    def num_patch_rows(self) -> int:
        """Patch rows at the configured ``image_size``."""
        return (self.image_size[0] - self.patch_size) // self.patch_stride + 1
