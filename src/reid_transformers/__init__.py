"""Person re-identification in the Hugging Face ecosystem.

Importing the package registers every architecture with ``AutoConfig``, ``AutoModel`` and
``AutoImageProcessor``.
"""

__version__ = "0.1.0.dev0"

from .backbones import load_vit_pretrained  # noqa: E402
from .deployment import ReIDEmbedder, export_onnx  # noqa: E402  (onnx is imported on use)
from .hub import HubPushError, push_to_hub, render_model_card, save_model_card  # noqa: E402
from .image_processing_reid import ReIDImageProcessor, ViTReIDImageProcessor  # noqa: E402
from .modeling_outputs import ReIDModelOutput  # noqa: E402
from .models import (  # noqa: E402  (registers the Auto classes)
    ARCHITECTURES,
    AAformerConfig,
    AAformerImageProcessor,
    AAformerModel,
    HATConfig,
    HATImageProcessor,
    HATModel,
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
    PANConfig,
    PANImageProcessor,
    PANModel,
    PRCTConfig,
    PRCTImageProcessor,
    PRCTModel,
)

__all__ = [
    "ReIDEmbedder",
    "export_onnx",
    "AAformerConfig",
    "AAformerImageProcessor",
    "AAformerModel",
    "ARCHITECTURES",
    "HATConfig",
    "HATImageProcessor",
    "HATModel",
    "HubPushError",
    "LATransformerConfig",
    "LATransformerImageProcessor",
    "LATransformerModel",
    "PANConfig",
    "PANImageProcessor",
    "PANModel",
    "PRCTConfig",
    "PRCTImageProcessor",
    "PRCTModel",
    "ReIDImageProcessor",
    "ReIDModelOutput",
    "ViTReIDImageProcessor",
    "load_vit_pretrained",
    "push_to_hub",
    "render_model_card",
    "save_model_card",
]
