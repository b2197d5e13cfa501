"""Pictures of AAformer's patch-to-part assignments over the input image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...utils import write_atomically

# Distinct, colour-blind-friendly part colours (Okabe-Ito), cycled if there are more parts.
PART_COLORS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (0, 0, 0),
)


def render_part_assignments(
    image: Image.Image | np.ndarray,
    assignments: torch.Tensor,
    grid: tuple[int, int],
    *,
    head: int | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """One panel per granularity group: the image with every patch tinted by its part.

    Args:
        image: the crop the model saw (PIL image or ``(H, W, 3)`` uint8 array), e.g.
            ``processor.denormalize(pixel_values)[i]``.
        assignments: one image's assignments from one layer, ``(heads, groups, N)`` (an
            element of ``output.part_assignments[layer][i]``).
        grid: the patch grid ``(rows, cols)`` with ``rows * cols == N``.
        head: which head to show; ``None`` shows, per patch, the part most heads chose.
        alpha: tint opacity in ``[0, 1]``.

    Returns:
        An RGB image ``groups`` crops wide.
    """
    if assignments.ndim != 3:
        raise ValueError(
            f"assignments must be (heads, groups, patches), got shape {tuple(assignments.shape)}"
        )
    heads, groups, patches = assignments.shape
    rows, cols = grid
    if rows * cols != patches:
        raise ValueError(f"grid {grid} has {rows * cols} cells but there are {patches} patches")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head must be in [0, {heads}), got {head}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if head is None:
        parts = torch.mode(assignments.cpu(), dim=0).values  # (groups, N): majority of heads
    else:
        parts = assignments[head].cpu()
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if base.ndim != 3 or base.shape[2] != 3 or base.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {base.shape} {base.dtype}")
    height, width = base.shape[:2]
    colors = np.array(PART_COLORS, dtype=np.float32)
    panels = []
    for group in range(groups):
        cell_part = parts[group].reshape(rows, cols).numpy() % len(PART_COLORS)
        # Nearest-neighbour upsampling of the part grid to the image.
        ys = np.minimum(np.arange(height) * rows // height, rows - 1)
        xs = np.minimum(np.arange(width) * cols // width, cols - 1)
        tint = colors[cell_part[ys[:, None], xs[None, :]]]
        panels.append(((1 - alpha) * base + alpha * tint).round().astype(np.uint8))
    return Image.fromarray(np.concatenate(panels, axis=1))


def save_part_assignments(path: str | os.PathLike[str], *args, **kwargs) -> Path:
    """:func:`render_part_assignments` written to a PNG file atomically."""
    picture = render_part_assignments(*args, **kwargs)
    return write_atomically(Path(path), lambda f: picture.save(f, format="PNG"))
