"""``ReIDEmbedder``: crops, or a frame and its boxes, in; L2-normalised ``(N, D)`` float32 out.

What a multi-object tracker needs from a re-ID model. Two backends share everything but the
forward pass:

* PyTorch (:meth:`ReIDEmbedder.from_pretrained`): any checkpoint folder, Hub id or loaded
  model, with the checkpoint's own image processor;
* onnxruntime (:meth:`ReIDEmbedder.from_onnx`): a file written by ``export_onnx``, with an
  image processor rebuilt from the preprocessing stored in it.

Either way the crops go through a ``ReIDImageProcessor`` call, so a deployment feeds the
model exactly what evaluation does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import PreTrainedModel

from ..image_processing_reid import ReIDImageProcessor
from .export import (
    INPUT_NAME,
    OUTPUT_NAME,
    _EmbeddingGraph,
    _load,
    read_onnx_metadata,
    require_onnx,
)

__all__ = ["COLOR_ORDERS", "ReIDEmbedder"]

#: Channel orders accepted for numpy images: OpenCV frames are BGR, most others RGB.
COLOR_ORDERS = ("rgb", "bgr")


class ReIDEmbedder:
    """Embed person crops for tracking or search.

    Call it as ``embedder(crops)`` with a list of PIL images / ``(H, W, 3)`` uint8 arrays, or
    as ``embedder(frame, boxes)`` with one ``(H, W, 3)`` uint8 frame and an ``(N, 4)`` array
    of ``x1, y1, x2, y2`` pixel boxes. Arrays are read in ``color_order`` (``"rgb"`` or
    ``"bgr"``; PIL images are always converted to RGB). The result is an ``(N, D)`` float32
    array of unit rows, in input order; ``N = 0`` gives ``(0, D)``.

    Use :meth:`from_pretrained` or :meth:`from_onnx` to build one.

    Args:
        forward: ``(B, 3, H, W)`` float32 numpy -> ``(B, D)`` numpy embeddings.
        processor: the image processor the crops go through.
        embedding_dim: ``D``.
        batch_size: the most crops per forward pass.
        flip: also embed each crop's horizontal mirror and average the two (then
            re-normalise), as evaluation's ``flip=True`` does.
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        processor: ReIDImageProcessor,
        embedding_dim: int,
        *,
        batch_size: int = 32,
        flip: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self._forward = forward
        self.processor = processor
        self.embedding_dim = int(embedding_dim)
        self.batch_size = batch_size
        self.flip = bool(flip)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model: PreTrainedModel | str | os.PathLike[str],
        *,
        processor: Any = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        flip: bool = False,
    ) -> ReIDEmbedder:
        """A PyTorch embedder for a checkpoint folder, Hub id or loaded model.

        ``processor`` defaults to the checkpoint's (for a loaded model: its architecture's
        processor at ``config.image_size``). ``device`` defaults to the model's own device
        for a loaded model, else CUDA if available.
        """
        if isinstance(model, PreTrainedModel):
            loaded, processor = _load(model, processor)
        else:
            from ..models.auto import load_checkpoint

            loaded, own = load_checkpoint(model, device=device)
            processor = own if processor is None else processor
        if device is not None:
            loaded = loaded.to(device)
        graph = _EmbeddingGraph(loaded.eval())

        def forward(pixel_values: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                batch = torch.from_numpy(pixel_values).to(loaded.device)
                return graph(batch).float().cpu().numpy()

        height, width = int(processor.size["height"]), int(processor.size["width"])
        # D from one blank image: configurations differ in how they size the embedding.
        embedding_dim = forward(np.zeros((1, 3, height, width), np.float32)).shape[-1]
        return cls(forward, processor, embedding_dim, batch_size=batch_size, flip=flip)

    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        batch_size: int = 32,
        flip: bool = False,
    ) -> ReIDEmbedder:
        """An onnxruntime embedder for a file written by ``export_onnx``.

        The image processor is rebuilt from the preprocessing stored in the file.
        ``providers`` defaults to ``["CPUExecutionProvider"]``.
        """
        require_onnx("onnxruntime")
        import onnxruntime

        metadata = read_onnx_metadata(onnx_path)
        height, width = metadata["input_size"]
        processor = ReIDImageProcessor(
            size={"height": int(height), "width": int(width)},
            do_resize=metadata["resize"],
            resample=getattr(PIL.Image.Resampling, metadata["resample"].upper()),
            rescale_factor=metadata["rescale_factor"],
            image_mean=metadata["image_mean"],
            image_std=metadata["image_std"],
        )
        session = onnxruntime.InferenceSession(
            str(Path(onnx_path)), providers=list(providers or ["CPUExecutionProvider"])
        )

        def forward(pixel_values: np.ndarray) -> np.ndarray:
            return session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]

        return cls(
            forward, processor, metadata["embedding_dim"], batch_size=batch_size, flip=flip
        )

    # ------------------------------------------------------------------ calling
    def __call__(
        self,
        images: Sequence[PIL.Image.Image | np.ndarray] | np.ndarray,
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        *,
        color_order: str = "rgb",
    ) -> np.ndarray:
        """Embed crops (``boxes=None``) or the ``boxes`` of one frame.

        Raises:
            ValueError: a bad ``color_order``, frame, crop or box array; a box that is empty
                after clipping to the frame (its index is named).
        """
        if color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
        if boxes is None:
            if isinstance(images, (np.ndarray, PIL.Image.Image)):
                raise ValueError(
                    "a single image was given without boxes; pass a list of crops, or the "
                    "frame with an (N, 4) box array"
                )
            crops = [_as_rgb(crop, color_order, f"crop {i}") for i, crop in enumerate(images)]
        else:
            frame = _as_rgb(images, color_order, "frame")
            crops = [frame[y1:y2, x1:x2] for x1, y1, x2, y2 in _pixel_boxes(boxes, frame.shape)]
        return self._embed(crops)

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(crops), self.embedding_dim), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            pixel_values = self.processor(chunk, return_tensors="np")["pixel_values"]
            pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
            embeddings = self._forward(pixel_values).astype(np.float32)
            if self.flip:
                mirrored = np.ascontiguousarray(pixel_values[..., ::-1])
                embeddings = (embeddings + self._forward(mirrored)) / 2
            out[start:start + len(chunk)] = embeddings
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # A zero embedding (never seen in practice) stays zero instead of becoming NaN.
        return out / np.maximum(norms, np.finfo(np.float32).tiny)


def _as_rgb(image: Any, color_order: str, name: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{name} must be a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{name} must be a non-empty (H, W, 3) uint8 array, got dtype {image.dtype} and "
            f"shape {image.shape}"
        )
    return image[..., ::-1] if color_order == "bgr" else image


def _pixel_boxes(boxes: Any, frame_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Integer ``x1, y1, x2, y2`` boxes clipped to the frame, outward-rounded."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1, y1, x2, y2, got {array.shape}")
    height, width = frame_shape[:2]
    result = []
    for index, (x1, y1, x2, y2) in enumerate(array):
        if not all(math.isfinite(value) for value in (x1, y1, x2, y2)):
            raise ValueError(f"box {index} has non-finite coordinates {[x1, y1, x2, y2]}")
        left, right = max(0, math.floor(x1)), min(width, math.ceil(x2))
        top, bottom = max(0, math.floor(y1)), min(height, math.ceil(y2))
        if right <= left or bottom <= top:
            raise ValueError(
                f"box {index} {[float(x1), float(y1), float(x2), float(y2)]} is empty inside "
                f"the {width}x{height} frame; expected x1 < x2 and y1 < y2 overlapping it"
            )
        result.append((left, top, right, bottom))
    return result
