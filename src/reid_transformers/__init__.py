"""Person re-identification in the Hugging Face ecosystem.

Importing the package registers every architecture with ``AutoConfig``, ``AutoModel`` and
``AutoImageProcessor``.
"""

__version__ = "0.1.0.dev0"

from . import models  # noqa: E402  (registers the Auto classes)
from .backbones import load_vit_pretrained  # noqa: E402
from .deployment import ReIDEmbedder, export_onnx  # noqa: E402  (onnx is imported on use)
from .hub import HubPushError, push_to_hub, render_model_card, save_model_card  # noqa: E402
from .image_processing_reid import ReIDImageProcessor, ViTReIDImageProcessor  # noqa: E402
from .modeling_outputs import ReIDModelOutput  # noqa: E402
from .models import *  # noqa: E402, F403  (the architectures: every name of models.__all__)

__all__ = [
    "ReIDEmbedder",
    "export_onnx",
    "HubPushError",
    "ReIDImageProcessor",
    "ReIDModelOutput",
    "ViTReIDImageProcessor",
    "load_vit_pretrained",
    "push_to_hub",
    "render_model_card",
    "save_model_card",
    *models.__all__,
]
