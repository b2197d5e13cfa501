"""Colour-histogram embeddings: the floor every learned re-ID model must clear.

Each image is resized, its central columns kept (a foreground prior: the person stands in
the middle of a detection box, background fills the sides), converted to HSV and cut into
horizontal stripes (head, torso, legs, ... as in classic hand-crafted re-ID features);
each stripe contributes a joint HSV histogram. Hue is meaningless for greys and near-black
pixels, so those share one hue bin instead of scattering over all of them. Histograms are
square-rooted (Hellinger kernel) and the concatenation is L2 normalised, so Euclidean
distances between embeddings are meaningful. What it cannot see (shape, texture,
patterns, carried objects) is what a trained model should add.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .utils import check_in_range


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    chroma = value - images.min(1).values
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = chroma.clamp(min=1e-12)
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = hue.gather(1, argmax.unsqueeze(1)).squeeze(1) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], 1)


class ColorHistogramEmbedder:
    """Stripe-wise HSV histograms as a fixed (untrained) embedding.

    Args:
        num_stripes: horizontal stripes per image.
        bins: histogram bins for hue, saturation and value.
        image_size: ``(height, width)`` every image is resized to first.
        center_fraction: fraction of the width, centred, that is histogrammed.

    The embedding has ``num_stripes * prod(bins)`` dimensions (576 by default) and unit
    L2 norm. The defaults were chosen on the synthetic dataset; docs/synthetic_data.md
    ("Difficulty, measured") gives their scores there, next to full-width 6-stripe 8x4x4
    histograms, with the snippet that measures both.
    """

    def __init__(
        self,
        num_stripes: int = 8,
        bins: tuple[int, int, int] = (8, 3, 3),
        image_size: tuple[int, int] = (128, 64),
        center_fraction: float = 0.5,
    ) -> None:
        if num_stripes < 1 or len(bins) != 3 or min(bins) < 1:
            raise ValueError(
                f"need num_stripes >= 1 and three positive bin counts, got {num_stripes}, {bins}"
            )
        if image_size[0] < num_stripes or image_size[1] < 1:
            raise ValueError(
                f"image_size {image_size} must be at least num_stripes={num_stripes} pixels high"
            )
        check_in_range("center_fraction", center_fraction, 0, 1, low_inclusive=False)
        self.center_fraction = center_fraction
        self.num_stripes = num_stripes
        self.bins = tuple(bins)
        self.image_size = tuple(image_size)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.num_stripes * int(np.prod(self.bins))

    def embed_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch ``(B, 3, H, W)`` (uint8 0..255 or float 0..1) -> ``(B, dim)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0, 1)
        width = x.shape[-1]
        keep = max(1, round(width * self.center_fraction))
        x = x[..., (width - keep) // 2 : (width - keep) // 2 + keep]
        bins = torch.tensor(self.bins).view(1, 3, 1, 1)
        quantised = (rgb_to_hsv(x) * bins).long().clamp_(max=bins - 1)
        hue, sat, val = quantised.unbind(1)
        hue = torch.where((sat == 0) | (val == 0), torch.zeros_like(hue), hue)  # achromatic
        joint = (hue * self.bins[1] + sat) * self.bins[2] + val
        b, h, w = joint.shape
        stripe = (torch.arange(h) * self.num_stripes // h).view(1, h, 1).expand(b, h, w)
        cells = int(np.prod(self.bins))
        flat = (torch.arange(b).view(b, 1, 1) * self.num_stripes + stripe) * cells + joint
        hist = torch.bincount(flat.reshape(-1), minlength=b * self.num_stripes * cells)
        hist = hist.view(b, self.num_stripes, cells).float()
        hist = hist / hist.sum(-1, keepdim=True)  # each stripe a distribution
        return torch.nn.functional.normalize(hist.sqrt().view(b, -1), dim=1)

    def __call__(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Embed PIL images (any mode, any size) or a tensor batch -> ``(B, dim)`` float32."""
        if isinstance(images, torch.Tensor):
            return self.embed_tensor(images).numpy()
        return self.embed_tensor(self._pil_batch(images)).numpy()

    def _pil_batch(self, images: Iterable[Image.Image]) -> torch.Tensor:
        height, width = self.image_size
        arrays = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise ValueError(f"expected PIL images, got {type(image).__name__}")
            resized = image.convert("RGB").resize((width, height), Image.BILINEAR)
            arrays.append(np.asarray(resized))
        if not arrays:
            raise ValueError("no images to embed")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def embed_dataset(
        self, dataset, batch_size: int = 256, progress: bool = True
    ) -> np.ndarray:
        """Embed every row of a dataset with an ``image`` column -> ``(N, dim)`` float32."""
        if "image" not in dataset.column_names:
            raise ValueError(f"dataset has no 'image' column (columns: {dataset.column_names})")
        images = dataset.select_columns(["image"])
        out = np.empty((len(dataset), self.dim), dtype=np.float32)
        for start in tqdm(
            range(0, len(dataset), batch_size), desc="colour histograms", disable=not progress,
            unit="batch",
        ):
            rows = images[start : start + batch_size]["image"]
            out[start : start + len(rows)] = self(rows)
        return out
