"""Pictures of PAN's spatial part masks over the input image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...utils import write_atomically


def render_part_masks(
    image: Image.Image | np.ndarray, masks: tuple[torch.Tensor, ...], *, alpha: float = 0.6
) -> Image.Image:
    """One panel per mask (all scales, left to right): the crop with the mask as a red glow.

    Args:
        image: the crop the model saw (PIL image or ``(H, W, 3)`` uint8 array).
        masks: one image's masks, one ``(k, h, w)`` tensor per scale (e.g.
            ``tuple(m[i] for m in output.part_masks)``); each mask is scaled to its maximum.
        alpha: glow opacity in ``[0, 1]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if base.ndim != 3 or base.shape[2] != 3 or base.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {base.shape} {base.dtype}")
    if not masks or any(m.ndim != 3 for m in masks):
        raise ValueError("masks must be a non-empty tuple of (k, h, w) tensors, one per scale")
    height, width = base.shape[:2]
    stacked = torch.cat([m.detach().float().cpu() for m in masks])  # (K, h, w)
    upsampled = F.interpolate(stacked[:, None], size=(height, width), mode="bilinear",
                              align_corners=False)[:, 0]
    peak = upsampled.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    weights = (upsampled / peak).clamp(0, 1).numpy()[..., None]  # (K, H, W, 1)
    red = np.array([255.0, 0.0, 0.0])
    panels = (1 - alpha * weights) * base + alpha * weights * red
    return Image.fromarray(np.concatenate(list(panels.round().astype(np.uint8)), axis=1))


def save_part_masks(path: str | os.PathLike[str], *args, **kwargs) -> Path:
    """:func:`render_part_masks` written to a PNG file atomically."""
    picture = render_part_masks(*args, **kwargs)
    return write_atomically(Path(path), lambda f: picture.save(f, format="PNG"))
