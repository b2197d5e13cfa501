"""Backbones shared by the re-ID models, with loaders for third-party weights."""

from __future__ import annotations

from .loading import CheckpointUnavailableError, LoadReport
from .vit import (
    ViTBackbone,
    ViTEmbeddings,
    ViTEncoder,
    ViTLayer,
    load_vit_pretrained,
)

__all__ = [
    "CheckpointUnavailableError",
    "LoadReport",
    "ViTBackbone",
    "ViTEmbeddings",
    "ViTEncoder",
    "ViTLayer",
    "load_vit_pretrained",
]

from .resnet import (
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm2d,
    ResNetBackbone,
    feature_grid,
    load_resnet_pretrained,
)

__all__ += [
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "feature_grid",
    "load_resnet_pretrained",
]
