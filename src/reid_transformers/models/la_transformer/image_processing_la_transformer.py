"""LA-Transformer preprocessing: 224x224, mean = std = 0.5 (the ViT-B/16 checkpoint's)."""

from __future__ import annotations

from ...image_processing_reid import ViTReIDImageProcessor


class LATransformerImageProcessor(ViTReIDImageProcessor):
    size = {"height": 224, "width": 224}
