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

from ..utils import check_in_range, check_int


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_horizontal_flip(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(images)
    check_in_range("p", p, 0, 1)
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
    check_int("padding", padding, minimum=0)
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


def _check_box_ranges(area: tuple[float, float], aspect_ratio: tuple[float, float]) -> None:
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area}")
    if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
        raise ValueError(f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}")


def _random_box_sizes(
    b: int, h: int, w: int, area: tuple[float, float], aspect_ratio: tuple[float, float],
    max_attempts: int, generator, device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image a box of ``area`` (fraction of the image, uniform) and height/width ratio
    (log-uniform in ``aspect_ratio``): the first of ``max_attempts`` draws that fits.

    Returns ``(heights, widths, fits)``, each ``(b,)``; ``fits`` is False where no draw fit."""
    n = b * max_attempts
    target = h * w * _uniform(n, area[0], area[1], generator, device)
    log_ratio = _uniform(
        n, math.log(aspect_ratio[0]), math.log(aspect_ratio[1]), generator, device
    )
    ratio = torch.exp(log_ratio)
    heights = torch.sqrt(target * ratio).round().long().view(b, max_attempts)
    widths = torch.sqrt(target / ratio).round().long().view(b, max_attempts)
    fits = (heights < h) & (widths < w) & (heights > 0) & (widths > 0)
    attempt = fits.long().argmax(1, keepdim=True)  # first attempt that fits
    return heights.gather(1, attempt).squeeze(1), widths.gather(1, attempt).squeeze(1), fits.any(1)


def _random_offsets(
    heights: torch.Tensor, widths: torch.Tensor, h: int, w: int, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform top-left corners ``(b,)`` that keep each box inside an ``h x w`` image."""
    dev = heights.device
    top = (torch.rand(len(heights), generator=generator, device=dev) * (h - heights + 1)).long()
    left = (torch.rand(len(widths), generator=generator, device=dev) * (w - widths + 1)).long()
    return top, left


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
    h: int, w: int,
) -> torch.Tensor:
    """``(b, h, w)`` booleans, True inside each image's box."""
    ys = torch.arange(h, device=top.device)[None, :, None]
    xs = torch.arange(w, device=top.device)[None, None, :]
    return (
        (ys >= top[:, None, None]) & (ys < (top + heights)[:, None, None])
        & (xs >= left[:, None, None]) & (xs < (left + widths)[:, None, None])
    )


def random_patch(
    images: torch.Tensor,
    p: float = 0.5,
    area: tuple[float, float] = (0.01, 0.5),
    aspect_ratio: tuple[float, float] = (0.1, 10.0),
    flip_p: float = 0.5,
    max_attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random patch (Zhou et al., "Learning generalisable omni-scale representations", 2019;
    fast-reid's ``RandomPatch``): with probability ``p`` paste onto each image a rectangle
    cut from another image of the batch, as a synthetic occluder.

    The patch covers a fraction of the image drawn uniformly from ``area`` with a
    height/width ratio drawn log-uniformly from ``aspect_ratio``; it is cut at a random place
    of a random other image, mirrored with probability ``flip_p`` and pasted at a random place.
    The reference implementations draw from a pool of patches of earlier batches and may also
    rotate them; here the pool is the current batch (a P x K batch holds P identities) and
    patches are not rotated. A batch of one image is returned unchanged (a copy).
    """
    _check_batch(images)
    check_in_range("p", p, 0, 1)
    check_in_range("flip_p", flip_p, 0, 1)
    _check_box_ranges(area, aspect_ratio)
    b, c, h, w = images.shape
    if b < 2:
        return images.clone()
    dev = images.device
    ph, pw, fits = _random_box_sizes(b, h, w, area, aspect_ratio, max_attempts, generator, dev)
    paste = fits & (torch.rand(b, generator=generator, device=dev) < p)
    # Another image of the batch for every image: shift by 1..b-1 positions.
    source = (torch.arange(b, device=dev)
              + torch.randint(1, b, (b,), generator=generator, device=dev)) % b
    source_top, source_left = _random_offsets(ph, pw, h, w, generator)
    top, left = _random_offsets(ph, pw, h, w, generator)
    mirror = torch.rand(b, generator=generator, device=dev) < flip_p
    mask = _box_mask(top, left, ph, pw, h, w) & paste[:, None, None]  # (B, H, W)

    # Source pixel of every target pixel (clamped outside the box, where it is not used).
    dy = torch.arange(h, device=dev)[None, :] - top[:, None]  # (B, H)
    dx = torch.arange(w, device=dev)[None, :] - left[:, None]  # (B, W)
    dx = torch.where(mirror[:, None], pw[:, None] - 1 - dx, dx)
    rows = (source_top[:, None] + dy).clamp(0, h - 1)[:, :, None]  # (B, H, 1)
    cols = (source_left[:, None] + dx).clamp(0, w - 1)[:, None, :]  # (B, 1, W)
    pasted = images.permute(0, 2, 3, 1)[source[:, None, None], rows, cols]  # (B, H, W, C)
    return torch.where(mask.unsqueeze(1), pasted.permute(0, 3, 1, 2), images)


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
    check_in_range("p", p, 0, 1)
    _check_box_ranges(area, aspect_ratio)
    b, c, h, w = images.shape
    dev = images.device
    eh, ew, fits = _random_box_sizes(b, h, w, area, aspect_ratio, max_attempts, generator, dev)
    erase = fits & (torch.rand(b, generator=generator, device=dev) < p)
    top, left = _random_offsets(eh, ew, h, w, generator)
    mask = _box_mask(top, left, eh, ew, h, w) & erase[:, None, None]
    mask = mask.unsqueeze(1)  # (B, 1, H, W)

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


def random_cutout(
    images: torch.Tensor,
    p: float = 0.5,
    size: int = 16,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cutout (DeVries and Taylor, 2017): with probability ``p`` set a ``size x size`` square
    of each image to ``fill``.

    The square is centred on a uniformly drawn pixel and clipped at the image border, so
    squares near an edge are partly outside and cover less. ``fill = 0`` on normalised pixels
    is the dataset mean.
    """
    _check_batch(images)
    check_in_range("p", p, 0, 1)
    check_int("size", size, minimum=1)
    b, _, h, w = images.shape
    dev = images.device
    centre_y = torch.randint(0, h, (b,), generator=generator, device=dev)
    centre_x = torch.randint(0, w, (b,), generator=generator, device=dev)
    cut = torch.rand(b, generator=generator, device=dev) < p
    sides = torch.full((b,), size, device=dev)
    mask = _box_mask(centre_y - size // 2, centre_x - size // 2, sides, sides, h, w)
    mask = (mask & cut[:, None, None]).unsqueeze(1)  # (B, 1, H, W)
    return images.masked_fill(mask, fill)


@dataclass
class BatchAugmentation:
    """The standard re-ID training augmentation, applied to a whole batch at once.

    Flip, then pad + random crop, then random patch, then random erasing, then cutout (each
    skipped when its probability or padding is 0; random patch and cutout are off by
    default). Holds its own
    generator, so two instances with the same ``seed`` produce the same sequence of
    augmentations.
    """

    flip_p: float = 0.5
    padding: int = 10
    erasing_p: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_aspect_ratio: tuple[float, float] = (0.3, 3.33)
    erasing_value: str | float | tuple[float, ...] = "random"
    patch_p: float = 0.0
    cutout_p: float = 0.0
    cutout_size: int = 16
    seed: int | None = None

    def __post_init__(self) -> None:
        check_in_range("flip_p", self.flip_p, 0, 1)
        check_in_range("erasing_p", self.erasing_p, 0, 1)
        check_in_range("patch_p", self.patch_p, 0, 1)
        check_in_range("cutout_p", self.cutout_p, 0, 1)
        check_int("cutout_size", self.cutout_size, minimum=1)
        check_int("padding", self.padding, minimum=0)
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
        if self.patch_p > 0:
            images = random_patch(images, self.patch_p, generator=gen)
        if self.erasing_p > 0:
            images = random_erasing(
                images, self.erasing_p, self.erasing_area, self.erasing_aspect_ratio,
                self.erasing_value, generator=gen,
            )
        if self.cutout_p > 0:
            images = random_cutout(images, self.cutout_p, self.cutout_size, generator=gen)
        return images
