"""The re-ID architectures, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .aaformer import AAformerConfig, AAformerImageProcessor, AAformerModel
from .hat import HATConfig, HATImageProcessor, HATModel
from .la_transformer import LATransformerConfig, LATransformerImageProcessor, LATransformerModel
from .pan import PANConfig, PANImageProcessor, PANModel
from .prct import PRCTConfig, PRCTImageProcessor, PRCTModel

# (config, model, image processor) of every architecture: the one list a new one joins.
ARCHITECTURES = (
    (LATransformerConfig, LATransformerModel, LATransformerImageProcessor),
    (AAformerConfig, AAformerModel, AAformerImageProcessor),
    (PANConfig, PANModel, PANImageProcessor),
    (PRCTConfig, PRCTModel, PRCTImageProcessor),
    (HATConfig, HATModel, HATImageProcessor),
)


def _register() -> None:
    for config_class, model_class, processor_class in ARCHITECTURES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoImageProcessor.register(
            config_class, image_processor_classes={"pil": processor_class}, exist_ok=True
        )


_register()

__all__ = [
    "AAformerConfig",
    "AAformerImageProcessor",
    "AAformerModel",
    "ARCHITECTURES",
    "HATConfig",
    "HATImageProcessor",
    "HATModel",
    "LATransformerConfig",
    "LATransformerImageProcessor",
    "LATransformerModel",
    "PANConfig",
    "PANImageProcessor",
    "PANModel",
    "PRCTConfig",
    "PRCTImageProcessor",
    "PRCTModel",
]
