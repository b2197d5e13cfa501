from .configuration_la_transformer import LATransformerConfig
from .image_processing_la_transformer import LATransformerImageProcessor
from .modeling_la_transformer import LATransformerModel, LATransformerPreTrainedModel

__all__ = [
    "LATransformerConfig",
    "LATransformerImageProcessor",
    "LATransformerModel",
    "LATransformerPreTrainedModel",
]
