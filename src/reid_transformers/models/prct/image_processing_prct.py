"""PRCT preprocessing: 256x128 with ImageNet mean and std (the ResNet-50 checkpoint's)."""

from __future__ import annotations

from ...image_processing_reid import ReIDImageProcessor


class PRCTImageProcessor(ReIDImageProcessor):
    size = {"height": 256, "width": 128}
