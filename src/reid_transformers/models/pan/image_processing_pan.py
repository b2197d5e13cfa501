"""PAN preprocessing: 384x128 with ImageNet mean and std (the ResNet-50 checkpoint's)."""

from __future__ import annotations

from ...image_processing_reid import ReIDImageProcessor


class PANImageProcessor(ReIDImageProcessor):
    size = {"height": 384, "width": 128}
