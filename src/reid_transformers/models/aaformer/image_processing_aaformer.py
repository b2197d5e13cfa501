"""AAformer preprocessing: 256x128, mean = std = 0.5 (the ViT-B/16 checkpoint's)."""

from __future__ import annotations

from ...image_processing_reid import ViTReIDImageProcessor


class AAformerImageProcessor(ViTReIDImageProcessor):
    size = {"height": 256, "width": 128}
