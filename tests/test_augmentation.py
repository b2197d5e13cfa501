from __future__ import annotations

import pytest
import torch

from reid_transformers.data import (
    BatchAugmentation,
    pad_random_crop,
    random_cutout,
    random_erasing,
    random_horizontal_flip,
    random_patch,
)


def batch(dtype=torch.uint8, b=16, h=32, w=16):
    g = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    return torch.randn(b, 3, h, w, generator=g)


def test_flip_mirrors_exactly_the_chosen_images():
    x = batch()
    out = random_horizontal_flip(x, p=0.5, generator=torch.Generator().manual_seed(1))
    flipped = [bool((out[i] == x[i].flip(-1)).all()) for i in range(len(x))]
    kept = [bool((out[i] == x[i]).all()) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(x)
    assert torch.equal(random_horizontal_flip(x, p=0.0), x)
    assert torch.equal(random_horizontal_flip(x, p=1.0), x.flip(-1))


def test_pad_crop_is_a_translation_with_fill():
    x = batch(torch.float32, b=8)
    out = pad_random_crop(x, padding=3, generator=torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for i in range(len(x)):
        offsets = [
            (t, left) for t in range(7) for left in range(7)
            if torch.equal(padded[i, :, t : t + 32, left : left + 16], out[i])
        ]
        assert offsets, f"image {i} is not a crop of its padded version"
    assert torch.equal(pad_random_crop(x, padding=0), x)


def test_random_erasing_replaces_one_rectangle():
    x = torch.zeros(32, 3, 32, 16)
    out = random_erasing(x, p=1.0, value=1.0, generator=torch.Generator().manual_seed(3))
    for img in out:
        mask = img[0] == 1
        assert mask.any()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all(), "erased region must be one rectangle"
        area = box.numel() / mask.numel()
        assert 0.01 <= area <= 0.45
        assert torch.equal(img[0], img[1])  # same rectangle on every channel
    assert torch.equal(random_erasing(x, p=0.0), x)


def test_random_erasing_fill_values_and_dtypes():
    x = batch(torch.uint8)
    out = random_erasing(x, p=1.0, generator=torch.Generator().manual_seed(4))
    assert out.dtype == torch.uint8 and not torch.equal(out, x)
    per_channel = random_erasing(
        torch.zeros(4, 3, 32, 16), p=1.0, value=(0.1, 0.2, 0.3),
        generator=torch.Generator().manual_seed(5),
    )
    assert per_channel[:, 2].unique().tolist() == pytest.approx([0.0, 0.3])
    with pytest.raises(ValueError, match="1 or 3 numbers"):
        random_erasing(x, p=1.0, value=(1, 2))
    with pytest.raises(ValueError, match="'random'"):
        random_erasing(x, value="mean")


def test_batch_augmentation_is_seeded():
    x = batch()
    a = BatchAugmentation(seed=7)
    b = BatchAugmentation(seed=7)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(a(x), first)  # the generator advances between calls
    assert first.shape == x.shape and first.dtype == x.dtype


def test_batch_augmentation_state_round_trip():
    x = batch()
    a = BatchAugmentation(seed=3)
    a(x)
    state = a.state_dict()
    expected = a(x)
    b = BatchAugmentation(seed=99)
    b.load_state_dict(state)
    assert torch.equal(b(x), expected)


def test_random_patch_pastes_a_rectangle_cut_from_another_image():
    # Image i is constant i + 1, so every pasted pixel names its source image.
    b, h, w = 12, 32, 16
    x = (torch.arange(b, dtype=torch.float32) + 1)[:, None, None, None].expand(b, 3, h, w)
    x = x.clone()
    out = random_patch(x, p=1.0, generator=torch.Generator().manual_seed(5))
    for i, img in enumerate(out):
        changed = img[0] != i + 1
        assert changed.any(), "p=1 pastes on every image"
        ys, xs = torch.nonzero(changed, as_tuple=True)
        box = changed[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all(), "the patch is one rectangle"
        assert 0.005 <= box.numel() / (h * w) <= 0.55
        assert len(torch.unique(img[0][changed])) == 1  # from exactly one other image
    assert torch.equal(random_patch(x, p=0.0), x)
    assert torch.equal(random_patch(x[:1], p=1.0), x[:1])


def test_random_patch_copies_pixels_in_order_or_mirrored():
    # A horizontal ramp: a copied patch keeps the ramp's direction unless mirrored.
    b, h, w = 64, 8, 32
    ramp = torch.arange(w, dtype=torch.float32).expand(b, 3, h, w).clone()
    ramp += 100 * torch.arange(b, dtype=torch.float32)[:, None, None, None]
    out = random_patch(ramp, p=1.0, flip_p=0.5, generator=torch.Generator().manual_seed(0))
    directions = set()
    for i, img in enumerate(out):
        changed = img[0] != ramp[i, 0]
        row = img[0][changed.any(1)][0][changed[changed.any(1)][0]]
        if len(row) > 1:
            step = row[1:] - row[:-1]
            assert torch.all(step == step[0]) and abs(float(step[0])) == 1.0
            directions.add(float(step[0]))
    assert directions == {1.0, -1.0}


def test_batch_augmentation_applies_random_patch():
    x = batch(torch.float32)
    plain = BatchAugmentation(flip_p=0, padding=0, erasing_p=0, seed=0)(x)
    patched = BatchAugmentation(flip_p=0, padding=0, erasing_p=0, patch_p=1.0, seed=0)(x)
    assert torch.equal(plain, x) and not torch.equal(patched, x)


def test_cutout_zeroes_one_square_clipped_at_the_border():
    x = torch.ones(64, 3, 32, 16)
    out = random_cutout(x, p=1.0, size=8, generator=torch.Generator().manual_seed(4))
    clipped = 0
    for img in out:
        mask = img[0] == 0
        assert mask.any() and torch.equal(img[0], img[2])  # same square on every channel
        ys, xs = torch.nonzero(mask, as_tuple=True)
        height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
        assert height <= 8 and width <= 8
        inside = 0 < ys.min() and ys.max() < 31 and 0 < xs.min() and xs.max() < 15
        assert (height, width) == (8, 8) or not inside
        clipped += (height, width) != (8, 8)
    assert 0 < clipped < len(x)  # centres near the border give partial squares
    assert torch.equal(random_cutout(x, p=0.0), x)
    half = random_cutout(x, p=0.5, size=4, generator=torch.Generator().manual_seed(5))
    assert 0 < sum(bool((img == 0).any()) for img in half) < len(x)


def test_batch_augmentation_applies_cutout_last():
    x = batch(torch.float32)
    augment = BatchAugmentation(flip_p=0, padding=0, erasing_p=0, cutout_p=1.0, cutout_size=6,
                                seed=0)
    out = augment(x)
    assert all(bool((img == 0).all(0).any()) for img in out)
    assert torch.equal(out[out != 0], x[out != 0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: random_horizontal_flip(torch.zeros(3, 8, 8)), r"\(B, C, H, W\)"),
        (lambda: random_horizontal_flip(torch.zeros(1, 3, 8, 8, dtype=torch.int32)), "uint8 or"),
        (lambda: random_horizontal_flip(torch.zeros(1, 3, 8, 8), p=1.5), r"p must be in \[0, 1\]"),
        (lambda: pad_random_crop(torch.zeros(1, 3, 8, 8), padding=-1), "padding must be"),
        (lambda: random_erasing(torch.zeros(1, 3, 8, 8), area=(0.5, 0.1)), "area must"),
        (lambda: BatchAugmentation(erasing_p=2), "erasing_p"),
        (lambda: BatchAugmentation(patch_p=-0.1), "patch_p"),
        (lambda: BatchAugmentation(cutout_p=1.1), "cutout_p"),
        (lambda: BatchAugmentation(cutout_size=0), "cutout_size"),
        (lambda: random_cutout(torch.zeros(1, 3, 8, 8), size=0), "size must be"),
        (lambda: random_patch(torch.zeros(2, 3, 8, 8), aspect_ratio=(2, 1)), "aspect_ratio"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
