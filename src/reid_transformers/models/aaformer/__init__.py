from .configuration_aaformer import ASSIGNMENTS, AAformerConfig
from .image_processing_aaformer import AAformerImageProcessor
from .modeling_aaformer import (
    AAformerModel,
    AAformerModelOutput,
    AAformerPreTrainedModel,
    stripe_assignments,
)
from .optimal_transport import ASSIGNMENT_METHODS, assign_patches, assignment_mask, sinkhorn_log
from .visualization_aaformer import render_part_assignments, save_part_assignments

__all__ = [
    "ASSIGNMENTS",
    "ASSIGNMENT_METHODS",
    "AAformerConfig",
    "AAformerImageProcessor",
    "AAformerModel",
    "AAformerModelOutput",
    "AAformerPreTrainedModel",
    "assign_patches",
    "assignment_mask",
    "render_part_assignments",
    "save_part_assignments",
    "sinkhorn_log",
    "stripe_assignments",
]
