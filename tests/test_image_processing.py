"""Tests for ReIDImageProcessor: PIL path, tensor fast path, inputs, save/load, Auto classes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, PreTrainedConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

import reid_transformers.image_processing_reid as module
from reid_transformers.image_processing_reid import ReIDImageProcessor, ViTReIDImageProcessor

GREY_LEVEL = 1 / 255
FLOAT_EPS = 1e-6


class SquareHalfStatsImageProcessor(ReIDImageProcessor):
    size = {"height": 224, "width": 224}
    image_mean = image_std = [0.5, 0.5, 0.5]


def identity_processor() -> ReIDImageProcessor:
    """Only converts to RGB: output is the 0..255 RGB image as float32 (B, 3, H, W)."""
    return ReIDImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients and a sinusoid with hard-edged blocks and a diagonal edge, (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    image = np.stack(
        [255 * y, 255 * x * (1 - y), 128 + 100 * np.sin(12 * x + 5 * y + seed)], axis=-1
    )
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 4, left : left + width // 3] = rng.integers(0, 256, 3)
    image[x + y > 1.3] = rng.integers(0, 256, 3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def pixels(output) -> np.ndarray:
    values = output["pixel_values"]
    return values.numpy() if isinstance(values, torch.Tensor) else values


# --- defaults and values -------------------------------------------------------------------


def test_defaults_of_the_provided_processors():
    reid, vit = ReIDImageProcessor(), ViTReIDImageProcessor()
    for processor in (reid, vit):
        assert (processor.size.height, processor.size.width) == (256, 128)
        assert processor.resample == Image.Resampling.BILINEAR
    assert reid.image_mean == tuple(IMAGENET_DEFAULT_MEAN)
    assert reid.image_std == tuple(IMAGENET_DEFAULT_STD)
    assert vit.image_mean == vit.image_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_constant_image_gives_exact_normalised_values(return_tensors):
    colour = np.array([37, 128, 250])
    image = Image.new("RGB", (40, 100), tuple(int(c) for c in colour))
    output = ReIDImageProcessor()(image, return_tensors=return_tensors)
    values = output["pixel_values"]
    assert isinstance(values, torch.Tensor if return_tensors == "pt" else np.ndarray)
    assert tuple(values.shape) == (1, 3, 256, 128)
    assert values.dtype in (np.float32, torch.float32)
    expected = (colour / 255 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(
        pixels(output)[0], np.broadcast_to(expected[:, None, None], (3, 256, 128)), atol=1e-5
    )


def test_three_line_subclass_sets_size_and_statistics():
    output = SquareHalfStatsImageProcessor()(Image.new("RGB", (64, 128), (255, 0, 51)))
    assert pixels(output).shape == (1, 3, 224, 224)
    np.testing.assert_allclose(pixels(output)[0, :, 0, 0], [1.0, -1.0, -0.6], atol=1e-6)


def test_pil_path_matches_transformers_vit_pil_processor():
    images = [Image.fromarray(natural_image(173, 61, seed)) for seed in range(3)]
    reference = ViTImageProcessorPil(
        size={"height": 256, "width": 128},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )(images, return_tensors="np")["pixel_values"]
    ours = pixels(ReIDImageProcessor()(images))
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_per_call_overrides_do_not_change_the_processor():
    image = random_image(50, 20)
    processor = ReIDImageProcessor()
    rescaled = pixels(processor(image, size=(50, 20), do_normalize=False))
    np.testing.assert_allclose(rescaled[0], np.moveaxis(image, -1, 0) / 255, atol=FLOAT_EPS)
    raw = pixels(
        processor(image, size={"height": 50, "width": 20}, do_rescale=False, do_normalize=False)
    )
    np.testing.assert_array_equal(raw[0], np.moveaxis(image, -1, 0))
    assert pixels(processor(image)).shape == (1, 3, 256, 128)


# --- input forms ---------------------------------------------------------------------------


def _single_image_forms(image: np.ndarray, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "crop.png"
    Image.fromarray(image).save(path)
    chw = np.moveaxis(image, -1, 0)
    return {
        "pil": Image.fromarray(image),
        "numpy_hwc_uint8": image,
        "numpy_chw_uint8": np.ascontiguousarray(chw),
        "torch_chw_uint8": torch.from_numpy(np.ascontiguousarray(chw)),
        "torch_hwc_uint8": torch.from_numpy(image),
        "path_str": str(path),
        "path_object": path,
        "numpy_hwc_float64": image / 255,
        "numpy_chw_float32": (chw / 255).astype(np.float32),
        "torch_chw_float32": torch.from_numpy(chw / 255).float(),
        "torch_chw_bfloat16": torch.from_numpy(chw / 255).to(torch.bfloat16),
    }


@pytest.mark.parametrize(
    "form",
    [
        "pil",
        "numpy_hwc_uint8",
        "numpy_chw_uint8",
        "torch_chw_uint8",
        "torch_hwc_uint8",
        "path_str",
        "path_object",
        "numpy_hwc_float64",
        "numpy_chw_float32",
        "torch_chw_float32",
        "torch_chw_bfloat16",
    ],
)
def test_every_single_image_form_gives_the_pil_result(form, tmp_path):
    image = natural_image(90, 37)
    processor = ReIDImageProcessor(do_normalize=False)
    reference = pixels(processor(Image.fromarray(image)))
    result = pixels(processor(_single_image_forms(image, tmp_path)[form]))
    assert result.shape == (1, 3, 256, 128)
    if "float" in form:
        # Float images are resized without rounding to whole grey levels (< 1 level apart);
        # bfloat16 input itself is off by up to half a level near 1 (8-bit significand).
        levels = 2 if "bfloat16" in form else 1
        np.testing.assert_allclose(result, reference, atol=levels * GREY_LEVEL + FLOAT_EPS)
    else:
        np.testing.assert_array_equal(result, reference)


def test_batched_forms_agree():
    images = [natural_image(80, 30, seed) for seed in range(3)]
    processor = ReIDImageProcessor()
    reference = pixels(processor([Image.fromarray(image) for image in images]))
    assert reference.shape == (3, 3, 256, 128)
    stacked = np.stack(images)
    batches = {
        "tuple of arrays": tuple(images),
        "numpy BHWC": stacked,
        "numpy BCHW": np.ascontiguousarray(np.moveaxis(stacked, -1, 1)),
        "mixed list": [Image.fromarray(images[0]), images[1], torch.from_numpy(images[2])],
    }
    for name, batch in batches.items():
        np.testing.assert_array_equal(pixels(processor(batch)), reference, err_msg=name)
    as_float = torch.from_numpy(np.moveaxis(stacked, -1, 1) / 255).float()
    np.testing.assert_allclose(pixels(processor(as_float)), reference, atol=0.02)


def test_input_data_format_decides_ambiguous_layouts():
    array = random_image(3, 10)  # (3, 10, 3): HWC 3x10 or CHW 10x3
    processor = identity_processor()
    as_hwc = pixels(processor(array))[0]
    np.testing.assert_array_equal(as_hwc, np.moveaxis(array, -1, 0))
    as_chw = pixels(processor(array, input_data_format="channels_first"))[0]
    np.testing.assert_array_equal(as_chw, array)
    tensor_default = pixels(processor(torch.from_numpy(array)))[0]
    np.testing.assert_array_equal(tensor_default, array)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 2))
    image.putpalette([10, 20, 30, 200, 100, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 1)
    if transparent:
        image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    "image, top_left, bottom_right",
    [
        (Image.new("L", (4, 2), 90), (90, 90, 90), (90, 90, 90)),
        (Image.new("1", (4, 2), 1), (255, 255, 255), (255, 255, 255)),
        (Image.new("LA", (4, 2), (90, 0)), (255, 255, 255), (255, 255, 255)),
        (Image.new("RGBA", (4, 2), (0, 100, 200, 255)), (0, 100, 200), (0, 100, 200)),
        (Image.new("RGBA", (4, 2), (0, 100, 200, 0)), (255, 255, 255), (255, 255, 255)),
        (Image.new("RGBA", (4, 2), (0, 0, 0, 128)), (127, 127, 127), (127, 127, 127)),
        (_palette_image(transparent=False), (200, 100, 0), (10, 20, 30)),
        (_palette_image(transparent=True), (200, 100, 0), (255, 255, 255)),
        (Image.new("CMYK", (4, 2), (0, 0, 0, 0)), (255, 255, 255), (255, 255, 255)),
        (Image.new("CMYK", (4, 2), (0, 255, 255, 0)), (255, 0, 0), (255, 0, 0)),
        (Image.new("YCbCr", (4, 2), (255, 128, 128)), (255, 255, 255), (255, 255, 255)),
    ],
    ids=[
        "L",
        "1",
        "LA-transparent",
        "RGBA-opaque",
        "RGBA-transparent",
        "RGBA-half",
        "P",
        "P-transparency",
        "CMYK-white",
        "CMYK-red",
        "YCbCr-white",
    ],
)
def test_pil_modes_convert_to_rgb(image, top_left, bottom_right):
    rgb = pixels(identity_processor()(image))[0]
    assert rgb.shape == (3, 2, 4)
    np.testing.assert_allclose(rgb[:, 0, 0], top_left, atol=1)
    np.testing.assert_allclose(rgb[:, 1, 3], bottom_right, atol=1)


@pytest.mark.parametrize("mode", ["I", "F", "I;16", "LAB", "HSV"])
def test_unsupported_pil_modes_are_rejected(mode):
    with pytest.raises(ValueError, match=f"unsupported PIL image mode '{mode}'"):
        ReIDImageProcessor()(Image.new(mode, (8, 16)))


def test_grey_and_rgba_arrays():
    processor = identity_processor()
    grey = np.full((6, 5), 77, dtype=np.uint8)
    for array in (grey, grey[..., None], grey[None]):
        np.testing.assert_array_equal(pixels(processor(array))[0], np.full((3, 6, 5), 77))
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 255
    out = pixels(processor(rgba))[0]
    np.testing.assert_array_equal(out[:, 0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[:, 1, 1], (255, 255, 255))
    float_rgba = pixels(processor(rgba.astype(np.float32) / 255))[0]
    np.testing.assert_allclose(float_rgba, out, atol=1e-3)
    as_pil = pixels(processor(Image.fromarray(rgba, mode="RGBA")))[0]
    np.testing.assert_allclose(out, as_pil, atol=1)


@pytest.mark.parametrize(
    "images, message",
    [
        (None, "got NoneType"),
        (42, "got int"),
        ({"image": 1}, "got dict"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), r"got shape \(1, 2, 8, 8, 3\)"),
        (np.zeros((64, 32, 2), np.uint8), r"shape \(64, 32, 2\).*2-channel"),
        (np.zeros((2, 64, 32), np.uint8), r"shape \(2, 64, 32\)"),
        (np.zeros((64, 32, 3), np.int32), "unsupported dtype int32"),
        (np.zeros((64, 32, 3), bool), "unsupported dtype bool"),
        (torch.zeros(3, 64, 32, dtype=torch.int64), "unsupported dtype int64"),
        (np.full((64, 32, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((64, 32, 3), 1.5), r"values in \[1.5, 1.5\]; expected \[0, 1\]"),
        (-np.ones((64, 32, 3)), r"values in \[-1, -1\]"),
        (np.zeros((0, 32, 3), np.uint8), "zero size"),
        ([], "empty list"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty batch"),
        ([[np.zeros((8, 8, 3), np.uint8)]], r"images\[0\] is a list: nested"),
        ([np.zeros((1, 8, 8, 3), np.uint8)], r"images\[0\] has shape \(1, 8, 8, 3\)"),
        ([np.zeros((8, 8, 3), np.uint8), None], r"images\[1\]: expected a PIL image"),
        ([Image.new("RGB", (8, 8)), Image.new("F", (8, 8))], r"images\[1\]: unsupported PIL"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_problem(images, message):
    with pytest.raises(ValueError, match=message):
        ReIDImageProcessor()(images)


def test_paths_missing_directory_corrupt_and_truncated(tmp_path):
    processor = ReIDImageProcessor()
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        processor(str(missing))
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: .*missing.jpg"):
        processor([Image.new("RGB", (8, 8)), missing])
    with pytest.raises(FileNotFoundError, match="not a file"):
        processor(tmp_path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot decode image file .*corrupt.jpg"):
        processor(corrupt)
    buffer = io.BytesIO()
    Image.fromarray(random_image(64, 32)).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="cannot decode image file .*truncated.png"):
        processor(str(truncated))


def test_image_files_with_alpha_and_exif_orientation(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 6), (0, 0, 0, 0)).save(rgba)
    np.testing.assert_array_equal(pixels(identity_processor()(rgba)), np.full((1, 3, 6, 4), 255))
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (12, 4), (200, 0, 0)).save(rotated, exif=exif, quality=95)
    assert pixels(identity_processor()(rotated)).shape == (1, 3, 12, 4)


def test_without_resize_images_must_share_a_size():
    processor = ReIDImageProcessor(do_resize=False)
    assert pixels(processor([random_image(20, 10), random_image(20, 10, 1)])).shape == (
        2,
        3,
        20,
        10,
    )
    with pytest.raises(ValueError, match=r"one size.*\(3, 20, 10\), \(3, 21, 10\)"):
        processor([random_image(20, 10), random_image(21, 10)])


# --- settings validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": {"shortest_edge": 256}}, r"size must be \{'height': H, 'width': W\}"),
        ({"size": {"height": 0, "width": 128}}, "positive integers"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std must be positive"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be a finite number or 3"),
        ({"image_mean": [0.5, float("nan"), 0.5]}, "image_mean must be a finite number or 3"),
        ({"rescale_factor": -1.0}, "rescale_factor must be a positive finite number"),
        ({"resample": 42}, "resample must be a PIL resampling filter.*got 42"),
        ({"do_center_crop": True}, "do_center_crop=True is not supported"),
        ({"do_pad": True}, "do_pad=True is not supported"),
        ({"do_convert_rgb": False}, "do_convert_rgb=False is not supported"),
        ({"data_format": "channels_last"}, "data_format must be 'channels_first'"),
        ({"input_data_format": "sideways"}, "input_data_format must be"),
    ],
)
def test_invalid_settings_fail_at_construction_and_per_call(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReIDImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=message):
        ReIDImageProcessor()(random_image(16, 8), **kwargs)


def test_invalid_output_options():
    processor = ReIDImageProcessor()
    with pytest.raises(ValueError, match="return_tensors must be None, 'np' or 'pt'"):
        processor(random_image(16, 8), return_tensors="tf")
    with pytest.raises(ValueError, match="device='cpu' needs return_tensors='pt'"):
        processor(random_image(16, 8), device="cpu")
    output = processor(random_image(16, 8), return_tensors="pt", device="cpu")
    assert output["pixel_values"].device.type == "cpu"


# --- tensor fast path ----------------------------------------------------------------------


@pytest.mark.parametrize("content", ["random", "natural"])
@pytest.mark.parametrize(
    "processor_class, source_size",
    [
        (ReIDImageProcessor, (400, 170)),  # downscale to 256x128
        (ReIDImageProcessor, (97, 41)),  # upscale to 256x128
        (SquareHalfStatsImageProcessor, (301, 263)),  # downscale to 224x224
        (SquareHalfStatsImageProcessor, (120, 57)),  # upscale to 224x224
    ],
)
def test_fast_path_matches_pil_path_within_one_grey_level(content, processor_class, source_size):
    make = random_image if content == "random" else natural_image
    images = [make(*source_size, seed=seed) for seed in range(3)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    processor = processor_class(do_normalize=False)
    pil_path = pixels(processor(images))  # numpy input always takes the PIL path
    fast_path = processor.preprocess_tensor_batch(batch).numpy()
    assert fast_path.shape == pil_path.shape
    assert np.abs(fast_path - pil_path).max() <= GREY_LEVEL + FLOAT_EPS
    normalising = processor_class()
    normalised_gap = np.abs(
        normalising.preprocess_tensor_batch(batch).numpy() - pixels(normalising(images))
    ).max()
    assert normalised_gap <= GREY_LEVEL / min(normalising.image_std) + 1e-5


def test_fast_path_is_bit_identical_when_no_resize_is_needed():
    images = np.stack([random_image(256, 128, seed) for seed in range(2)])
    processor = ReIDImageProcessor()
    fast = processor.preprocess_tensor_batch(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(fast.numpy(), pixels(processor(list(images))))


class _CallCounter:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize(
    "make_input, takes_fast_path",
    [
        (lambda batch: batch, True),
        (lambda batch: batch.permute(0, 2, 3, 1), True),
        (lambda batch: list(batch), True),
        (lambda batch: (batch[0], batch[1]), True),
        (lambda batch: [batch[0], batch[1, :, :50]], False),  # different sizes
        (lambda batch: batch.float() / 255, False),  # float tensors
        (lambda batch: batch[:, :1], False),  # grey
        (lambda batch: list(batch.permute(0, 2, 3, 1).numpy()), False),  # numpy
    ],
    ids=["BCHW", "BHWC", "list", "tuple", "mixed-sizes", "float", "grey", "numpy"],
)
def test_call_routes_uint8_tensor_batches_to_the_fast_path(
    make_input, takes_fast_path, monkeypatch
):
    batch = torch.from_numpy(np.stack([natural_image(100, 52, s) for s in range(2)]))
    batch = batch.permute(0, 3, 1, 2).contiguous()
    processor = ReIDImageProcessor()
    counter = _CallCounter(processor._preprocess)
    monkeypatch.setattr(processor, "_preprocess", counter)
    output = processor(make_input(batch), return_tensors="pt")["pixel_values"]
    assert output.shape == (2, 3, 256, 128) and output.dtype == torch.float32
    assert counter.calls == (0 if takes_fast_path else 1)
    if takes_fast_path:
        torch.testing.assert_close(output, processor.preprocess_tensor_batch(batch), rtol=0, atol=0)


def test_non_bilinear_processors_fall_back_to_pil_for_tensor_batches(monkeypatch):
    processor = ReIDImageProcessor(resample=Image.Resampling.BICUBIC)
    counter = _CallCounter(processor._preprocess)
    monkeypatch.setattr(processor, "_preprocess", counter)
    batch = torch.randint(0, 256, (2, 3, 40, 20), dtype=torch.uint8)
    assert pixels(processor(batch)).shape == (2, 3, 256, 128)
    assert counter.calls == 1
    with pytest.raises(ValueError, match="only bilinear.*resample=BICUBIC"):
        processor.preprocess_tensor_batch(batch)


def test_preprocess_tensor_batch_output_and_list_input():
    batch = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)
    processor = ViTReIDImageProcessor()
    out = processor.preprocess_tensor_batch(batch)
    assert out.shape == (4, 3, 256, 128) and out.dtype == torch.float32
    assert out.is_contiguous() and out.device == batch.device
    assert -1.0 - FLOAT_EPS <= out.min() and out.max() <= 1.0 + FLOAT_EPS
    torch.testing.assert_close(processor.preprocess_tensor_batch(list(batch)), out, rtol=0, atol=0)
    assert torch.equal(batch, batch.clone())  # input untouched
    no_resize = ReIDImageProcessor(do_resize=False).preprocess_tensor_batch(batch)
    assert no_resize.shape == (4, 3, 64, 32)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 3, 16, 8), "takes uint8 images.*torch.float32"),
        (torch.zeros(2, 1, 16, 8, dtype=torch.uint8), r"got shape \(2, 1, 16, 8\)"),
        (torch.zeros(3, 16, 8, dtype=torch.uint8), r"got shape \(3, 16, 8\)"),
        (torch.zeros(0, 3, 16, 8, dtype=torch.uint8), "non-empty"),
        (torch.zeros(1, 3, 0, 8, dtype=torch.uint8), "zero size"),
        ([], "empty list"),
        (
            [torch.zeros(3, 16, 8, dtype=torch.uint8), torch.zeros(3, 16, 9, dtype=torch.uint8)],
            "one shape",
        ),
        ([torch.zeros(1, 3, 16, 8, dtype=torch.uint8)], r"images\[0\] must be a \(3, H, W\)"),
        (np.zeros((1, 3, 16, 8), np.uint8), "got ndarray"),
    ],
)
def test_preprocess_tensor_batch_rejects_bad_input(images, message):
    with pytest.raises(ValueError, match=message):
        ReIDImageProcessor().preprocess_tensor_batch(images)


@pytest.mark.parametrize("source_size", [(400, 170), (97, 41)])
def test_accelerator_resize_branch_matches_pil_within_one_grey_level(source_size, monkeypatch):
    # The float branch that GPUs take, run on CPU so it is covered without an accelerator.
    monkeypatch.setattr(module, "_UINT8_RESIZE_DEVICES", ())
    images = [natural_image(*source_size, seed) for seed in range(2)] + [random_image(*source_size)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    processor = ReIDImageProcessor(do_rescale=False, do_normalize=False)
    resized = processor.preprocess_tensor_batch(batch)
    assert resized.dtype == torch.float32
    assert torch.equal(resized, resized.round())
    reference = pixels(processor(images))
    assert np.abs(resized.numpy() - reference).max() <= 1
    monkeypatch.undo()
    assert not torch.equal(resized, processor.preprocess_tensor_batch(batch))  # branch was taken


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_on_cuda_matches_pil_path():
    images = [natural_image(300, 140, seed) for seed in range(3)] + [random_image(300, 140)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).cuda()
    processor = ReIDImageProcessor(do_normalize=False)
    fast = processor.preprocess_tensor_batch(batch)
    assert fast.device.type == "cuda"
    assert np.abs(fast.cpu().numpy() - pixels(processor(images))).max() <= GREY_LEVEL + FLOAT_EPS
    on_device = processor(batch.cpu(), return_tensors="pt", device="cuda")["pixel_values"]
    assert on_device.device.type == "cuda"


# --- denormalize ---------------------------------------------------------------------------


@pytest.mark.parametrize("processor_class", [ReIDImageProcessor, ViTReIDImageProcessor])
def test_denormalize_round_trips_within_one_grey_level(processor_class):
    processor = processor_class()
    images = np.stack([random_image(256, 128, seed) for seed in range(3)])
    values = pixels(processor(images))
    restored = processor.denormalize(values)
    assert restored.dtype == np.uint8 and restored.shape == (3, 256, 128, 3)
    assert np.abs(restored.astype(int) - images).max() <= 1
    from_tensor = processor.denormalize(torch.from_numpy(values[0]))
    assert from_tensor.shape == (256, 128, 3)
    np.testing.assert_array_equal(from_tensor, restored[0])


def test_denormalize_inverts_the_resized_image_and_clips():
    processor = ReIDImageProcessor()
    image = Image.fromarray(natural_image(100, 50))
    resized = np.asarray(image.resize((128, 256), Image.Resampling.BILINEAR))
    restored = processor.denormalize(pixels(processor(image)))[0]
    assert np.abs(restored.astype(int) - resized).max() <= 1
    extreme = np.stack([np.full((3, 2, 2), -100.0), np.full((3, 2, 2), 100.0)])
    clipped = processor.denormalize(extreme)
    assert (clipped[0] == 0).all() and (clipped[1] == 255).all()


@pytest.mark.parametrize(
    "values, message",
    [
        (np.zeros((1, 3, 4, 4), np.uint8), "floating point.*uint8"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), "floating point.*int32"),
        (np.zeros((1, 4, 4, 4)), r"\(B, 3, H, W\).*\(1, 4, 4, 4\)"),
        (np.zeros((4, 4)), r"got \(4, 4\)"),
        (np.full((3, 4, 4), np.inf), "NaN or infinite"),
        ([[0.0]], "got list"),
    ],
)
def test_denormalize_rejects_bad_input(values, message):
    with pytest.raises(ValueError, match=message):
        ReIDImageProcessor().denormalize(values)


# --- save / load ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "processor",
    [
        ReIDImageProcessor(),
        ViTReIDImageProcessor(),
        SquareHalfStatsImageProcessor(),
        ReIDImageProcessor(
            size=(384, 192),
            resample=Image.Resampling.BICUBIC,
            image_mean=[0.4, 0.5, 0.6],
            image_std=[0.2, 0.3, 0.4],
        ),
    ],
    ids=["reid", "vit", "subclass", "overrides"],
)
def test_save_and_load_round_trip(processor, tmp_path):
    written = processor.save_pretrained(tmp_path)
    assert [Path(path).name for path in written] == ["preprocessor_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["preprocessor_config.json"]
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == type(processor).__name__
    loaded = type(processor).from_pretrained(tmp_path)
    assert type(loaded) is type(processor)
    assert loaded.to_dict() == processor.to_dict()
    image = natural_image(70, 30)
    np.testing.assert_array_equal(pixels(loaded(image)), pixels(processor(image)))


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    ReIDImageProcessor().save_pretrained(tmp_path)
    before = (tmp_path / "preprocessor_config.json").read_text()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        ViTReIDImageProcessor(size=(128, 64)).save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == ["preprocessor_config.json"]
    assert (tmp_path / "preprocessor_config.json").read_text() == before


def test_from_pretrained_validates_the_saved_settings(tmp_path):
    config = ReIDImageProcessor().to_dict()
    config["size"] = {"shortest_edge": 256}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="size must be"):
        ReIDImageProcessor.from_pretrained(tmp_path)


class _RegistrationTestConfig(PreTrainedConfig):
    model_type = "reid_image_processing_registration_test"


class _RegistrationTestImageProcessor(ReIDImageProcessor):
    """Unique name: AutoImageProcessor resolves the saved image_processor_type by class name."""

    size = {"height": 224, "width": 224}
    image_mean = image_std = [0.5, 0.5, 0.5]


def test_auto_image_processor_returns_the_registered_class(tmp_path):
    AutoConfig.register(_RegistrationTestConfig.model_type, _RegistrationTestConfig)
    AutoImageProcessor.register(
        _RegistrationTestConfig, image_processor_classes={"pil": _RegistrationTestImageProcessor}
    )
    _RegistrationTestConfig().save_pretrained(tmp_path)
    _RegistrationTestImageProcessor(size=(192, 96)).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is _RegistrationTestImageProcessor
    assert (loaded.size.height, loaded.size.width) == (192, 96)
    assert loaded.image_mean == (0.5, 0.5, 0.5)


# --- zero-size images (issue 13, item 12) ---------------------------------------------------


@pytest.mark.parametrize("size", [(0, 16), (8, 0), (0, 0)])
def test_zero_size_pil_images_are_rejected_like_zero_size_arrays(size):
    width, height = size
    with pytest.raises(ValueError, match=rf"image has zero size: PIL image of {width}x{height}"):
        ReIDImageProcessor()(Image.new("RGB", size))
    # In a batch the error names the image, as for arrays.
    with pytest.raises(ValueError, match=r"images\[1\]: image has zero size"):
        ReIDImageProcessor()([Image.new("RGB", (8, 16)), Image.new("L", size)])


def test_unconvertible_image_file_error_names_the_file(tmp_path):
    # A 16-bit greyscale PNG decodes (mode I;16) but has no 8-bit rendering; the error must
    # say which file it was, not only which mode.
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((16, 8), 40000, dtype=np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"image file '.*depth\.png': unsupported PIL image mode"):
        ReIDImageProcessor()(str(path))


@pytest.mark.parametrize(
    "batch",
    [
        torch.zeros(2, 3, 0, 6, dtype=torch.uint8),
        torch.zeros(2, 3, 6, 0, dtype=torch.uint8),
        torch.zeros(2, 0, 6, 3, dtype=torch.uint8),
        [torch.zeros(3, 0, 6, dtype=torch.uint8)] * 2,
    ],
)
def test_zero_size_uint8_tensor_batches_raise_a_clear_error(batch):
    with pytest.raises(ValueError, match=r"images\[0\]: image has zero size: shape"):
        ReIDImageProcessor(size={"height": 8, "width": 4})(batch, return_tensors="pt")
