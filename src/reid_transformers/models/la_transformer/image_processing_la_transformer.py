"""LA-Transformer preprocessing as the released training code does it: 224x224, bicubic
resizing, ImageNet mean/std.

The ViT-B/16 checkpoint was pre-trained with mean = std = 0.5, but LA-Transformer's training
normalised with the ImageNet statistics; the model was fine-tuned (and its numbers measured)
on those inputs, so they are the default here.
"""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from ...image_processing_reid import ReIDImageProcessor


class LATransformerImageProcessor(ReIDImageProcessor):
    """224x224, bicubic, ImageNet mean ``(0.485, 0.456, 0.406)`` / std ``(0.229, 0.224,
    0.225)`` [released code]. Bicubic resizing runs through PIL; the uint8 tensor fast path
    (bilinear only) does not apply."""

    size = {"height": 224, "width": 224}
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
