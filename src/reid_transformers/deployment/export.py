"""ONNX export of every re-ID architecture, with its preprocessing written down.

The exported graph takes ``pixel_values`` ``(B, 3, H, W)`` float32 (the image processor's
output) and returns ``embeddings`` ``(B, D)`` float32, the model's retrieval embedding, with
``B`` dynamic. It is made by ``torch.export`` and converted by ``torch.onnx``'s dynamo exporter
(onnxscript). Non-strict ``torch.export`` is tried first; a model whose Python code pins the
batch size under it (``len(tensor)``) is traced again in strict mode, where TorchDynamo keeps
such sizes symbolic. :attr:`ExportResult.exporter` says which one produced the file.

What a consumer needs to feed the graph (input size, mean/std, rescale factor, resampling,
colour order, layout, distance) is stored twice: as the ONNX model's ``metadata_props`` (one
string per key, JSON for lists) and as ``<name>.json`` beside the ``.onnx`` file.

``quantize="int8"`` (or :func:`quantize_onnx` on an exported file) applies onnxruntime's
dynamic int8 quantisation: weights of the supported operators (MatMul, Gemm, Conv, ...) are
stored as int8, activations are quantised on the fly, inputs and outputs stay float32. The
metadata's ``quantization`` key says which the file holds.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.image_utils import PILImageResampling

from ..utils import write_atomically

if TYPE_CHECKING:
    from ..retrieval.extraction import ImageProcessor

__all__ = [
    "METADATA_FORMAT_VERSION",
    "ExportResult",
    "OnnxParity",
    "compare_with_onnxruntime",
    "default_processor",
    "export_onnx",
    "metadata_path_for",
    "preprocessing_metadata",
    "quantize_onnx",
    "read_onnx_metadata",
    "require_onnx",
]

#: Version of the metadata layout; bumped when a key changes meaning.
METADATA_FORMAT_VERSION = 1
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"
# Opset 18 is the lowest the dynamo exporter emits without a version conversion pass.
DEFAULT_OPSET = 18
#: Values of ``export_onnx(quantize=...)``; the metadata records ``"none"`` for float32.
QUANTIZATIONS = ("int8",)
_METADATA_PREFIX = "reid_transformers."
_EXTRA_HINT = "install the ONNX extra: pip install 'reid-transformers[onnx]'"


def require_onnx(*modules: str) -> None:
    """Raise an ImportError naming the extra when an optional ONNX package is missing."""
    for module in modules:
        try:
            __import__(module)
        except ImportError as error:
            raise ImportError(f"{module} is not installed; {_EXTRA_HINT}") from error


def metadata_path_for(onnx_path: str | os.PathLike[str]) -> Path:
    """The JSON file written beside an exported model: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        metadata_path: the JSON file beside it (same content as the ONNX metadata).
        metadata: the preprocessing and model facts, as stored.
        exporter: ``"torch.export (non-strict)"`` or ``"torch.export (strict)"``.
    """

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    exporter: str


@dataclass(frozen=True)
class OnnxParity:
    """onnxruntime against PyTorch on the same random ``pixel_values``, per batch size.

    Attributes:
        max_abs_diff: largest absolute element difference, per batch size.
        min_cosine: smallest row-wise cosine similarity, per batch size.
    """

    max_abs_diff: dict[int, float]
    min_cosine: dict[int, float]

    def within(self, atol: float = 1e-4, min_cosine: float = 0.99999) -> bool:
        """Whether every batch size meets both tolerances."""
        return all(value <= atol for value in self.max_abs_diff.values()) and all(
            value >= min_cosine for value in self.min_cosine.values()
        )


class _EmbeddingGraph(nn.Module):
    """``pixel_values -> embeddings``: the one output a deployment needs, as a plain tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).embeddings


def _load(model: PreTrainedModel | str | os.PathLike[str], processor: ImageProcessor | None):
    if isinstance(model, PreTrainedModel):
        if processor is None:
            processor = default_processor(model)
        return model, processor
    if isinstance(model, (str, os.PathLike)):
        from ..models.auto import load_checkpoint

        loaded, loaded_processor = load_checkpoint(model, device="cpu")
        return loaded, processor if processor is not None else loaded_processor
    raise TypeError(
        f"model must be a PreTrainedModel, a checkpoint folder or a Hub id, got "
        f"{type(model).__name__}"
    )


def default_processor(model: PreTrainedModel) -> ImageProcessor:
    """The architecture's image processor at the model's ``config.image_size``."""
    from ..models import ARCHITECTURES

    for config_class, _, processor_class in ARCHITECTURES:
        if isinstance(model.config, config_class):
            height, width = model.config.image_size
            return processor_class(size={"height": int(height), "width": int(width)})
    raise ValueError(
        f"no image processor known for config {type(model.config).__name__}; pass processor="
    )


def preprocessing_metadata(model: PreTrainedModel, processor: Any, embedding_dim: int) -> dict:
    """The facts a consumer of the exported graph needs, as JSON-ready values."""
    size = processor.size
    height, width = int(size["height"]), int(size["width"])
    mean = processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)
    std = processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)
    return {
        "format_version": METADATA_FORMAT_VERSION,
        "architecture": model.config.model_type,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "NCHW",
        "color_order": "RGB",
        "input_size": [height, width],
        "resize": bool(processor.do_resize),
        "resample": PILImageResampling(processor.resample).name.lower(),
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else 1.0,
        "image_mean": [float(value) for value in mean],
        "image_std": [float(value) for value in std],
        "embedding_dim": int(embedding_dim),
        # Every model's embeddings are compared by cosine (they are L2-normalised or, as
        # BNNeck outputs, meant to be); euclidean on unit vectors ranks identically.
        "distance": "cosine",
    }


def _export_program(graph: nn.Module, example: torch.Tensor) -> tuple[Any, str]:
    dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}}
    try:
        program = torch.export.export(
            graph, (example,), dynamic_shapes=dynamic_shapes, strict=False
        )
        return program, "torch.export (non-strict)"
    except Exception as non_strict_error:  # noqa: BLE001  (any tracing failure: try strict)
        try:
            program = torch.export.export(
                graph, (example,), dynamic_shapes=dynamic_shapes, strict=True
            )
        except Exception as strict_error:
            first = str(non_strict_error).strip().splitlines()[0]
            raise RuntimeError(
                f"torch.export cannot trace {type(graph.model).__name__} with a dynamic batch "
                f"(non-strict: {first}; strict: "
                f"{str(strict_error).strip().splitlines()[0]})"
            ) from strict_error
        return program, "torch.export (strict)"


def export_onnx(
    model: PreTrainedModel | str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    processor: ImageProcessor | None = None,
    opset_version: int = DEFAULT_OPSET,
    example_batch_size: int = 2,
    quantize: str | None = None,
) -> ExportResult:
    """Export a re-ID model to ONNX with a dynamic batch and its preprocessing as metadata.

    Args:
        model: a loaded model, or a checkpoint folder / Hub id (loaded on the CPU).
        output_path: the ``.onnx`` file to write (replaced atomically if it exists); the
            metadata goes to the same name with ``.json``.
        processor: the image processor whose preprocessing the metadata records; default
            the checkpoint's, or for a loaded model its architecture's processor at
            ``config.image_size``.
        opset_version: ONNX opset of the graph.
        example_batch_size: batch size of the tracing example (>= 2, so that no size-1
            batch is specialised into the graph).
        quantize: ``None`` for a float32 graph, or ``"int8"`` to write the graph after
            onnxruntime's dynamic int8 quantisation (needs ``onnxruntime``; smaller and, for
            transformer models, faster on CPUs, at some accuracy cost: see
            docs/deployment.md).

    Returns:
        An :class:`ExportResult`. The graph is checked with ``onnx.checker`` before it is
        written.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (the message names the extra).
        TypeError: ``model`` is neither a model nor a path / Hub id.
        ValueError: ``output_path`` does not end in ``.onnx``, or a bad ``example_batch_size``
            or ``quantize``.
        RuntimeError: the model cannot be traced with a dynamic batch.
    """
    require_onnx("onnx", "onnxscript")
    output_path = _onnx_output_path(output_path)
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ValueError(
                f"quantize must be None or one of {QUANTIZATIONS}, got {quantize!r}"
            )
        require_onnx("onnxruntime")
    if isinstance(example_batch_size, bool) or not isinstance(example_batch_size, int) or (
        example_batch_size < 2
    ):
        raise ValueError(f"example_batch_size must be an int >= 2, got {example_batch_size!r}")
    model, processor = _load(model, processor)
    was_training, device = model.training, model.device
    model.eval()
    try:
        height, width = int(processor.size["height"]), int(processor.size["width"])
        example = torch.randn(
            example_batch_size, 3, height, width, generator=torch.Generator().manual_seed(0)
        )
        graph = _EmbeddingGraph(model).to("cpu")
        # An eager pass first: it fixes D, and fills any per-grid caches with real tensors so
        # that tracing reads them instead of caching traced stand-ins.
        with torch.no_grad():
            embedding_dim = int(graph(example).shape[-1])
            program, exporter = _export_program(graph, example)
        onnx_program = torch.onnx.export(
            program,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset_version,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    finally:
        # Tracing happens on the CPU; the caller's model goes back where it was.
        model.train(was_training).to(device)
    proto = onnx_program.model_proto
    metadata = preprocessing_metadata(model, processor, embedding_dim)
    metadata["exporter"] = exporter
    metadata["opset_version"] = int(opset_version)
    metadata["quantization"] = quantize or "none"
    if quantize == "int8":
        proto = _quantized_int8(proto)
    return _write_model(proto, metadata, output_path)


def quantize_onnx(
    onnx_path: str | os.PathLike[str], output_path: str | os.PathLike[str]
) -> ExportResult:
    """Write the int8 version of a float32 file made by :func:`export_onnx`.

    The same as exporting with ``quantize="int8"``, without tracing the model again. The
    metadata is copied with ``quantization`` set to ``"int8"``.

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
        ValueError: ``output_path`` does not end in ``.onnx``, ``onnx_path`` has no
            reid_transformers metadata or is quantised already.
    """
    require_onnx("onnx", "onnxruntime")
    import onnx

    output_path = _onnx_output_path(output_path)
    metadata = read_onnx_metadata(onnx_path)
    # Files exported before the key existed are float32.
    if metadata.get("quantization", "none") != "none":
        raise ValueError(
            f"{onnx_path} is quantised already ({metadata['quantization']}); expected a "
            f"float32 export"
        )
    proto = onnx.load_model(str(onnx_path))
    return _write_model(_quantized_int8(proto), {**metadata, "quantization": "int8"}, output_path)


def _onnx_output_path(output_path: str | os.PathLike[str]) -> Path:
    output_path = Path(output_path)
    if output_path.suffix != ".onnx":
        raise ValueError(f"output_path must end in .onnx, got {str(output_path)!r}")
    return output_path


def _quantized_int8(proto: Any) -> Any:
    """onnxruntime's dynamic int8 quantisation (signed int8 weights, per tensor) of a graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic writes only to files; a private folder keeps the output path's folder
    # free of partial files.
    with tempfile.TemporaryDirectory() as folder:
        quantized_path = Path(folder) / "int8.onnx"
        quantize_dynamic(proto, quantized_path, weight_type=QuantType.QInt8)
        return onnx.load_model(str(quantized_path))


def _write_model(proto: Any, metadata: dict[str, Any], output_path: Path) -> ExportResult:
    """Store ``metadata`` in ``proto``, check it, and write the ``.onnx`` and ``.json`` files."""
    import onnx

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = _METADATA_PREFIX + key
        entry.value = json.dumps(value)
    onnx.checker.check_model(proto)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    write_atomically(output_path, lambda handle: handle.write(buffer.getvalue()))
    metadata_path = metadata_path_for(output_path)
    text = json.dumps(metadata, indent=2) + "\n"
    write_atomically(metadata_path, lambda handle: handle.write(text.encode()))
    return ExportResult(output_path, metadata_path, metadata, metadata["exporter"])


def read_onnx_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata :func:`export_onnx` stored in an ONNX file's ``metadata_props``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no reid_transformers metadata.
    """
    require_onnx("onnx")
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    proto = onnx.load_model(str(path), load_external_data=False)
    metadata = {
        entry.key[len(_METADATA_PREFIX):]: json.loads(entry.value)
        for entry in proto.metadata_props
        if entry.key.startswith(_METADATA_PREFIX)
    }
    if not metadata:
        raise ValueError(
            f"{path} has no reid_transformers metadata; export it with export_onnx or "
            f"`reid-transformers export`"
        )
    return metadata


def compare_with_onnxruntime(
    model: PreTrainedModel,
    onnx_path: str | os.PathLike[str],
    batch_sizes: tuple[int, ...] = (1, 7),
    *,
    seed: int = 0,
) -> OnnxParity:
    """Run the PyTorch model and the exported file on the same random inputs and compare.

    The inputs are standard-normal ``pixel_values`` at the size stored in the file.
    """
    require_onnx("onnxruntime")
    import onnxruntime

    metadata = read_onnx_metadata(onnx_path)
    height, width = metadata["input_size"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    graph = _EmbeddingGraph(model).eval()
    max_abs_diff: dict[int, float] = {}
    min_cosine: dict[int, float] = {}
    for batch_size in batch_sizes:
        pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = graph(pixel_values.to(model.device)).float().cpu().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.numpy()})[0]
        max_abs_diff[batch_size] = float(np.abs(got - expected).max())
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        min_cosine[batch_size] = float(((got * expected).sum(1) / norms).min())
    return OnnxParity(max_abs_diff, min_cosine)
