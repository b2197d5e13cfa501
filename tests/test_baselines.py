from __future__ import annotations

import colorsys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from reid_transformers.baselines import ColorHistogramEmbedder, rgb_to_hsv


def test_rgb_to_hsv_matches_colorsys():
    rgb = torch.rand(2, 3, 5, 7)
    rgb[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # grey: hue and saturation 0
    rgb[0, :, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    for b in range(2):
        for y in range(5):
            for x in range(7):
                expected = colorsys.rgb_to_hsv(*rgb[b, :, y, x].tolist())
                np.testing.assert_allclose(hsv[b, :, y, x].numpy(), expected, atol=1e-5)


def test_embedding_is_stripewise_hellinger_histogram():
    emb = ColorHistogramEmbedder(num_stripes=2, bins=(4, 2, 2), image_size=(8, 4),
                                 center_fraction=1.0)
    img = torch.zeros(1, 3, 8, 4)
    img[0, 0, :4] = 1.0  # top stripe pure red, bottom stripe black
    out = emb(img)
    assert out.shape == (1, 2 * 16) and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    top, bottom = out[0, :16], out[0, 16:]
    # Red: hue bin 0, saturation bin 1, value bin 1 -> joint (0 * 2 + 1) * 2 + 1 = 3.
    assert np.argmax(top) == 3 and np.count_nonzero(top) == 1
    assert np.argmax(bottom) == 0 and np.count_nonzero(bottom) == 1
    np.testing.assert_allclose(top[3], bottom[0])


def test_pil_inputs_of_any_mode_and_size():
    emb = ColorHistogramEmbedder()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (100, 40, 3), dtype=np.uint8))
    images = [rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P")]
    out = emb(images)
    assert out.shape == (4, emb.dim) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)  # alpha ignored
    with pytest.raises(ValueError, match="expected PIL images"):
        emb(["not an image"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        emb(torch.zeros(2, 1, 8, 8))


def test_colour_separates_identities_and_embed_dataset():
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    images, pids = [], []
    for pid, colour in enumerate(colours):
        for _ in range(3):
            noise = rng.integers(-20, 20, (64, 32, 3))
            arr = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            images.append(Image.fromarray(arr))
            pids.append(pid)
    ds = datasets.Dataset.from_dict({"image": images, "pid": pids})
    emb = ColorHistogramEmbedder(image_size=(64, 32)).embed_dataset(ds, batch_size=4,
                                                                      progress=False)
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argmin(dist, axis=1)
    assert all(pids[n] == p for n, p in zip(nearest, pids, strict=True))
    with pytest.raises(ValueError, match="no 'image' column"):
        ColorHistogramEmbedder().embed_dataset(ds.remove_columns("image"))


def test_only_the_central_columns_count():
    emb = ColorHistogramEmbedder(num_stripes=1, image_size=(8, 10), center_fraction=0.4)
    img = torch.zeros(2, 3, 8, 10)
    img[1, :, :, :3] = 1.0  # second image differs only in the outer columns
    img[1, :, :, 7:] = 1.0
    out = emb(img)
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(ValueError, match="center_fraction"):
        ColorHistogramEmbedder(center_fraction=0)


def test_greys_share_one_hue_bin():
    emb = ColorHistogramEmbedder(num_stripes=1, bins=(8, 3, 3), image_size=(4, 4),
                                 center_fraction=1.0)
    greyish = torch.full((2, 3, 4, 4), 0.5)
    greyish[0, 0] += 0.05  # faint red tint
    greyish[1, 2] += 0.05  # faint blue tint: a different hue, same grey
    out = emb(greyish)
    np.testing.assert_array_equal(out[0], out[1])


def test_bad_configuration():
    with pytest.raises(ValueError, match="num_stripes"):
        ColorHistogramEmbedder(num_stripes=0)
    with pytest.raises(ValueError, match="at least num_stripes"):
        ColorHistogramEmbedder(num_stripes=10, image_size=(4, 4))
