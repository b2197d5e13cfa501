"""Training augmentations applied to whole batches with torch (no per-image Python loop).

Every function takes ``images`` of shape ``(B, C, H, W)``, uint8 or floating point, and
returns a new tensor of the same shape and dtype; randomness comes from an optional
``torch.Generator`` so a seeded run is reproducible. They run on whatever device the batch
is on (the generator must live on the same device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")


def _check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_horizontal_flip(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(images)
    _check_probability(p, "p")
    flip = torch.rand(len(images), generator=generator, device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def pad_random_crop(
    images: torch.Tensor,
    padding: int = 10,
    fill: float = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pad every side by ``padding`` pixels with ``fill``, then crop back to ``(H, W)`` at a
    random offset per image: a translation of up to ``padding`` pixels, as in BoT/TransReID.
    """
    _check_batch(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return images.clone()
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, value=fill)
    dev = images.device
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    rows = (top[:, None] + torch.arange(h, device=dev))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(w, device=dev))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=dev)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_erasing(
    images: torch.Tensor,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect_ratio: tuple[float, float] = (0.3, 3.33),
    value: str | float | Sequence[float] = "random",
    max_attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020): with probability ``p`` replace one random
    rectangle of each image.

    The rectangle covers a fraction of the image drawn uniformly from ``area`` with a
    height/width ratio drawn log-uniformly from ``aspect_ratio``; up to ``max_attempts``
    draws are tried until one fits inside the image, else the image is left unchanged.

    Args:
        value: ``"random"`` fills with per-pixel noise (uniform 0..255 for uint8, standard
            normal for float, i.e. noise in normalised-pixel units); a number or a per-channel
            sequence fills with that constant (e.g. the normalisation mean).
    """
    _check_batch(images)
    _check_probability(p, "p")
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area}")
    if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
        raise ValueError(f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}")
    b, c, h, w = images.shape
    dev = images.device

    n = b * max_attempts
    target = h * w * _uniform(n, area[0], area[1], generator, dev)
    log_ratio = _uniform(n, math.log(aspect_ratio[0]), math.log(aspect_ratio[1]), generator, dev)
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(target * ratio).round().long().view(b, max_attempts)
    ew = torch.sqrt(target / ratio).round().long().view(b, max_attempts)
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    attempt = fits.long().argmax(1, keepdim=True)  # first attempt that fits
    eh, ew = eh.gather(1, attempt).squeeze(1), ew.gather(1, attempt).squeeze(1)
    erase = fits.any(1) & (torch.rand(b, generator=generator, device=dev) < p)

    top = (torch.rand(b, generator=generator, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    mask = (
        (ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
        & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None])
        & erase[:, None, None]
    ).unsqueeze(1)  # (B, 1, H, W)

    if isinstance(value, str):
        if value != "random":
            raise ValueError(
                f"value must be 'random', a number or per-channel numbers, got {value!r}"
            )
        if images.dtype == torch.uint8:
            fill = torch.randint(0, 256, images.shape, generator=generator, device=dev,
                                 dtype=torch.uint8)
        else:
            fill = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
    else:
        fill = torch.as_tensor(value, dtype=torch.float32, device=dev).reshape(-1, 1, 1)
        if fill.numel() not in (1, c):
            raise ValueError(f"value needs 1 or {c} numbers (one per channel), got {fill.numel()}")
        fill = fill.expand(c, 1, 1).to(images.dtype)
    return torch.where(mask, fill, images)


@dataclass
class BatchAugmentation:
    """The standard re-ID training augmentation, applied to a whole batch at once.

    Flip, then pad + random crop, then random erasing (each skipped when its probability or
    padding is 0). Holds its own generator, so two instances with the same ``seed`` produce
    the same sequence of augmentations.
    """

    flip_p: float = 0.5
    padding: int = 10
    erasing_p: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_aspect_ratio: tuple[float, float] = (0.3, 3.33)
    erasing_value: str | float | tuple[float, ...] = "random"
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_probability(self.flip_p, "flip_p")
        _check_probability(self.erasing_p, "erasing_p")
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator states per device, so a resumed run draws the same augmentations."""
        return {str(device): gen.get_state() for device, gen in self._generators.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for device, generator_state in state.items():
            self._generator(torch.device(device)).set_state(generator_state)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment ``images`` ``(B, C, H, W)``; returns a new tensor of the same shape/dtype."""
        _check_batch(images)
        gen = self._generator(images.device)
        if self.flip_p > 0:
            images = random_horizontal_flip(images, self.flip_p, generator=gen)
        if self.padding > 0:
            images = pad_random_crop(images, self.padding, generator=gen)
        if self.erasing_p > 0:
            images = random_erasing(
                images, self.erasing_p, self.erasing_area, self.erasing_aspect_ratio,
                self.erasing_value, generator=gen,
            )
        return images
