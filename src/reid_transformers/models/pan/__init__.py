from .configuration_pan import PANConfig
from .image_processing_pan import PANImageProcessor
from .modeling_pan import PANModel, PANModelOutput, PANPreTrainedModel, orthogonality_loss
from .visualization_pan import render_part_masks, save_part_masks

__all__ = [
    "PANConfig",
    "PANImageProcessor",
    "PANModel",
    "PANModelOutput",
    "PANPreTrainedModel",
    "orthogonality_loss",
    "render_part_masks",
    "save_part_masks",
]
