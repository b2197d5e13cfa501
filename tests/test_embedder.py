"""ReIDEmbedder: crops or frame + boxes in, unit float32 (N, D) out, with PyTorch and
onnxruntime, preprocessing exactly like the checkpoint's image processor."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from reid_transformers.deployment import ReIDEmbedder
from reid_transformers.models import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
)

from .test_la_transformer import TINY

SIZE = {"height": 32, "width": 16}


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model() -> LATransformerModel:
    torch.manual_seed(0)
    return LATransformerModel(LATransformerConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def processor() -> LATransformerImageProcessor:
    # Not the architecture's defaults, so that a backend ignoring them would show.
    return LATransformerImageProcessor(size=SIZE, image_mean=[0.4, 0.5, 0.6],
                                       image_std=[0.2, 0.3, 0.25])


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def torch_embedder(model, processor) -> ReIDEmbedder:
    return ReIDEmbedder.from_pretrained(model, processor=processor, batch_size=4)


@pytest.fixture(scope="module")
def onnx_path(model, processor, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from reid_transformers.deployment import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "la.onnx"
    return export_onnx(model, path, processor=processor).path


def crops_of(frame: np.ndarray, boxes) -> list[np.ndarray]:
    return [frame[y1:y2, x1:x2] for x1, y1, x2, y2 in boxes]


def reference(model, processor, crops, *, flip: bool = False) -> np.ndarray:
    pixel_values = processor(crops, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeddings = model(pixel_values=pixel_values).embeddings
        if flip:
            embeddings = embeddings + model(pixel_values=pixel_values.flip(-1)).embeddings
    return unit(embeddings.numpy())


BOXES = [(0, 0, 20, 40), (10, 5, 60, 85), (30, 40, 70, 90), (1, 2, 9, 30), (5, 5, 45, 25)]


def test_crops_match_the_image_processor_and_model(model, processor, frame, torch_embedder):
    crops = [PIL.Image.fromarray(crop) for crop in crops_of(frame, BOXES)]
    got = torch_embedder(crops)
    assert got.dtype == np.float32 and got.shape == (5, torch_embedder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, reference(model, processor, crops), atol=1e-5)


def test_frame_and_boxes_equal_the_crops_in_either_colour_order(frame, torch_embedder):
    expected = torch_embedder(crops_of(frame, BOXES))
    np.testing.assert_allclose(torch_embedder(frame, np.array(BOXES)), expected, atol=1e-6)
    bgr = np.ascontiguousarray(frame[..., ::-1])
    np.testing.assert_allclose(
        torch_embedder(bgr, np.array(BOXES, float), color_order="bgr"), expected, atol=1e-6
    )
    # Read as RGB, the BGR frame is another image.
    assert not np.allclose(torch_embedder(bgr, BOXES), expected, atol=1e-3)


def test_boxes_are_clipped_to_the_frame_and_rounded_outwards(frame, torch_embedder):
    outside = np.array([[-10.0, -5.0, 20.0, 40.0], [30.2, 40.7, 500.0, 400.0]])
    inside = [(0, 0, 20, 40), (30, 40, 70, 90)]
    np.testing.assert_allclose(
        torch_embedder(frame, outside), torch_embedder(crops_of(frame, inside)), atol=1e-6
    )


def test_degenerate_and_malformed_boxes_are_rejected_by_index(frame, torch_embedder):
    with pytest.raises(ValueError, match=r"box 1 .* is empty inside the 70x90 frame"):
        torch_embedder(frame, [(0, 0, 10, 10), (20, 5, 20, 30)])
    with pytest.raises(ValueError, match=r"box 0 .* is empty"):
        torch_embedder(frame, [(80, 0, 100, 10)])  # wholly right of the frame
    with pytest.raises(ValueError, match="box 2 has non-finite"):
        torch_embedder(frame, [(0, 0, 5, 5), (0, 0, 5, 5), (0, np.nan, 5, 5)])
    with pytest.raises(ValueError, match=r"shape \(N, 4\).*\(2, 3\)"):
        torch_embedder(frame, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="color_order must be one of"):
        torch_embedder(frame, BOXES, color_order="hsv")
    with pytest.raises(ValueError, match="without boxes"):
        torch_embedder(frame)
    with pytest.raises(ValueError, match=r"frame must be a non-empty \(H, W, 3\) uint8"):
        torch_embedder(frame.astype(np.float32), BOXES)


def test_empty_inputs_give_an_empty_result_of_width_d(frame, torch_embedder):
    dim = torch_embedder(crops_of(frame, BOXES[:1])).shape[1]
    for empty in (np.zeros((0, 4)), []):
        got = torch_embedder(frame, empty)
        assert got.shape == (0, dim) and got.dtype == np.float32
    assert torch_embedder([]).shape == (0, dim)


def test_internal_batching_does_not_change_the_result(model, processor, frame):
    crops = crops_of(frame, BOXES)
    one = ReIDEmbedder.from_pretrained(model, processor=processor, batch_size=1)(crops)
    many = ReIDEmbedder.from_pretrained(model, processor=processor, batch_size=32)(crops)
    np.testing.assert_allclose(one, many, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        ReIDEmbedder.from_pretrained(model, processor=processor, batch_size=0)


def test_flip_averages_with_the_mirror(model, processor, frame):
    crops = crops_of(frame, BOXES)
    got = ReIDEmbedder.from_pretrained(model, processor=processor, flip=True)(crops)
    np.testing.assert_allclose(got, reference(model, processor, crops, flip=True), atol=1e-5)
    assert not np.allclose(got, reference(model, processor, crops), atol=1e-4)


def test_onnx_backend_preprocesses_like_the_processor_and_matches_pytorch(
    onnx_path, model, processor, frame, torch_embedder
):
    onnx_embedder = ReIDEmbedder.from_onnx(onnx_path, batch_size=2)
    crops = crops_of(frame, BOXES)
    np.testing.assert_array_equal(
        onnx_embedder.processor(crops, return_tensors="np")["pixel_values"],
        processor(crops, return_tensors="np")["pixel_values"],
    )
    got = onnx_embedder(frame[..., ::-1].copy(), BOXES, color_order="bgr")
    expected = torch_embedder(frame, BOXES)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (unit(got) * expected).sum(1).min() >= 0.99999
    assert onnx_embedder(frame, np.zeros((0, 4))).shape == (0, expected.shape[1])
    flipped = ReIDEmbedder.from_onnx(onnx_path, flip=True)(crops)
    np.testing.assert_allclose(flipped, reference(model, processor, crops, flip=True), atol=1e-4)


def test_onnx_backend_runs_an_int8_export(onnx_path, frame, torch_embedder, tmp_path):
    from reid_transformers.deployment import quantize_onnx

    int8_path = quantize_onnx(onnx_path, tmp_path / "la.int8.onnx").path
    got = ReIDEmbedder.from_onnx(int8_path)(frame, BOXES)
    expected = torch_embedder(frame, BOXES)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # int8 weights move the embeddings a little, not the direction they point in.
    assert (got * expected).sum(1).min() >= 0.99
