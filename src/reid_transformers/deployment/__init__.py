"""Deployment: ONNX export of the re-ID models and an embedder for trackers and services.

* :func:`export_onnx` writes ``pixel_values (B, 3, H, W) -> embeddings (B, D)`` with a dynamic
  batch, the preprocessing in the ONNX metadata and in a JSON file beside it, optionally
  int8-quantised (:func:`quantize_onnx` does that to an exported file).
* :class:`ReIDEmbedder` turns crops, or a frame and its boxes, into L2-normalised float32
  ``(N, D)`` embeddings with PyTorch or onnxruntime, preprocessing exactly like the image
  processor.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional ``onnx`` extra; they are
imported only when an ONNX function is called.
"""

from .embedder import ReIDEmbedder
from .export import (
    ExportResult,
    OnnxParity,
    compare_with_onnxruntime,
    export_onnx,
    quantize_onnx,
    read_onnx_metadata,
)

__all__ = [
    "ExportResult",
    "OnnxParity",
    "ReIDEmbedder",
    "compare_with_onnxruntime",
    "export_onnx",
    "quantize_onnx",
    "read_onnx_metadata",
]
