"""AAformer configuration."""

from __future__ import annotations

from ...configuration_utils import ViTReIDConfig, as_int_tuple
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
        self.part_granularities = as_int_tuple(
            self.part_granularities,
            "part_granularities",
            expected="positive part counts like (2, 3)",
        )
        self.check_choice("assignment", ASSIGNMENTS)
        self.check_bool("parts_visible_to_all")
        self.check_positive_number("ot_epsilon")
        self.check_positive("ot_iterations")
        self.check_probability("label_smoothing")
        self.check_positive_number("triplet_margin", none_means="soft margin")
        self.check_non_negative("triplet_weight")
        super().__post_init__(**kwargs)
        if self.assignment == "stripes" and self.num_patch_rows < max(self.part_granularities):
            raise ValueError(
                f"assignment='stripes' needs at least as many patch rows as parts in a group: "
                f"image_size {self.image_size} has {self.num_patch_rows} rows, "
                f"part_granularities {self.part_granularities} need "
                f"{max(self.part_granularities)}"
            )

    @property
    def num_parts(self) -> int:
        """[PART] tokens: the sum of the granularities."""
        return sum(self.part_granularities)
