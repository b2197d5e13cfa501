from .configuration_hat import HATConfig
from .image_processing_hat import HATImageProcessor
from .modeling_hat import HATModel, HATPreTrainedModel, scale_to_grid

__all__ = [
    "HATConfig",
    "HATImageProcessor",
    "HATModel",
    "HATPreTrainedModel",
    "scale_to_grid",
]
