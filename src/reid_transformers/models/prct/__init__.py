from .configuration_prct import PRCTConfig
from .image_processing_prct import PRCTImageProcessor
from .modeling_prct import (
    LinformerSelfAttention,
    PartAggregationTransformer,
    PRCTLayer,
    PRCTModel,
    PRCTPartEmbeddings,
    PRCTPreTrainedModel,
    resize_sequence_projection,
    sincos_position_encoding_2d,
)

__all__ = [
    "LinformerSelfAttention",
    "PRCTConfig",
    "PRCTImageProcessor",
    "PRCTLayer",
    "PRCTModel",
    "PRCTPartEmbeddings",
    "PRCTPreTrainedModel",
    "PartAggregationTransformer",
    "resize_sequence_projection",
    "sincos_position_encoding_2d",
]
