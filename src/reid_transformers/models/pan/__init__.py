from .configuration_pan import PANConfig
from .image_processing_pan import PANImageProcessor
from .modeling_pan import PANModel, PANModelOutput, PANPreTrainedModel, orthogonality_loss

__all__ = [
    "PANConfig",
    "PANImageProcessor",
    "PANModel",
    "PANModelOutput",
    "PANPreTrainedModel",
    "orthogonality_loss",
]
