"""PyTorch vs onnxruntime throughput and parity of the exported re-ID models, one table.

For each architecture (default configuration at its default input size, or ``--tiny`` for
the test suite's tiny ones): images per second at batch 1 and 32 with PyTorch eager fp32,
PyTorch bf16 autocast, onnxruntime fp32 and onnxruntime int8 (``quantize_onnx``:
onnxruntime's dynamic quantisation of the MatMul / Gemm / Conv weights), plus the fp32
export's max abs difference / min cosine against PyTorch at batch 1, 7 and 32, and the int8
model's min cosine against PyTorch. Random weights: the figures are costs and agreement,
not accuracy. An architecture that fails to export is reported as such and the run goes on.

With ``--checkpoint DIR`` (a trained checkpoint, e.g. ``examples/demo.py``'s
``training/best``) it measures accuracy instead: the synthetic dataset's query and gallery
(generated or reused as the demo does) are embedded by ``ReIDEmbedder`` with PyTorch fp32,
onnxruntime fp32 and onnxruntime int8, and mAP / rank-1 / mINP of each are printed side by
side with the cosine of each row to PyTorch's.

    python benchmarks/bench_export.py [--tiny] [--archs pan hat] [--repeats 3] [--threads N]
    python benchmarks/bench_export.py --checkpoint outputs/demo/training/best
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import inference_seconds  # noqa: E402

from reid_transformers.data.datasets import load_reid_dataset  # noqa: E402
from reid_transformers.data.synthetic import make_synthetic_reid  # noqa: E402
from reid_transformers.deployment import ReIDEmbedder  # noqa: E402
from reid_transformers.deployment.export import (  # noqa: E402
    compare_with_onnxruntime,
    export_onnx,
    quantize_onnx,
)
from reid_transformers.evaluation import evaluate_ranking  # noqa: E402
from reid_transformers.models import ARCHITECTURES  # noqa: E402

TINY = {
    "la_transformer": dict(image_size=(32, 16), patch_size=8, patch_stride=8, hidden_size=32,
                           num_hidden_layers=3, num_attention_heads=4, intermediate_size=64),
    "aaformer": dict(image_size=(32, 16), patch_size=8, patch_stride=8, hidden_size=32,
                     num_hidden_layers=3, num_attention_heads=4, intermediate_size=64),
    "pan": dict(image_size=(64, 32), spatial_hidden_size=16, pam_dim=8, embedding_size=16,
                channel_reduction=64, depths=[1, 1, 1, 1], layer_type="basic",
                hidden_sizes=[16, 32, 64, 128]),
    "hat": dict(image_size=(64, 32), bottleneck_depth=1, tfc_hidden_sizes=(16, 24, 32),
                tfc_num_heads=2, tfc_head_dim=8, tfc_intermediate_size=32,
                depths=[1, 1, 1, 1], layer_type="basic", hidden_sizes=[16, 32, 64, 128]),
    "prct": dict(image_size=(64, 32), hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, linformer_k=8,
                 depths=[1, 1, 1, 1], layer_type="basic", hidden_sizes=[16, 32, 64, 128]),
}
BATCHES = (1, 32)
COLUMNS = ("pt fp32", "pt bf16", "ort fp32", "ort int8")


def session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def ort_seconds(ort_session, pixel_values: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    out = ort_session.run(None, {"pixel_values": pixel_values})[0]  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = ort_session.run(None, {"pixel_values": pixel_values})[0]
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_architecture(name, config_class, model_class, args, folder: Path) -> list[str]:
    settings = TINY[name] if args.tiny else {}
    torch.manual_seed(0)
    model = model_class(config_class(**settings)).eval()
    path = folder / f"{name}.onnx"
    try:
        result = export_onnx(model, path)
    except RuntimeError as error:
        return [f"{name}: export failed: {str(error).splitlines()[0][:200]}"]
    parity = compare_with_onnxruntime(model, path, (1, 7, 32))
    int8_path = quantize_onnx(path, folder / f"{name}.int8.onnx").path
    fp32_session, int8_session = session(path, args.threads), session(int8_path, args.threads)
    lines = [
        f"{name} ({result.exporter}; input {tuple(result.metadata['input_size'])}, "
        f"D={result.metadata['embedding_dim']}): fp32 parity max|diff| "
        + ", ".join(f"b{b} {d:.1e}" for b, d in parity.max_abs_diff.items())
        + "; min cosine " + f"{min(parity.min_cosine.values()):.7f}"
    ]
    generator = torch.Generator().manual_seed(1)
    for batch in BATCHES:
        pixel_values = torch.randn(batch, 3, *result.metadata["input_size"], generator=generator)
        array = pixel_values.numpy()

        def call(pixel_values=pixel_values):
            return model(pixel_values=pixel_values).embeddings

        times = [
            inference_seconds(call, torch.float32, args.repeats),
            inference_seconds(call, torch.bfloat16, args.repeats),
            ort_seconds(fp32_session, array, args.repeats)[0],
        ]
        int8_seconds, int8_out = ort_seconds(int8_session, array, args.repeats)
        times.append(int8_seconds)
        with torch.inference_mode():
            reference = call().numpy()
        cosine = (int8_out * reference).sum(1) / (
            np.linalg.norm(int8_out, axis=1) * np.linalg.norm(reference, axis=1)
        )
        rates = "  ".join(f"{batch / seconds:9.1f}" for seconds in times)
        lines.append(f"  batch {batch:>2}  {rates}   int8 min cosine {cosine.min():.5f}")
    return lines


def min_and_mean_cosine(rows: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Row-wise cosine of two ``(N, D)`` arrays of unit rows: smallest and mean."""
    cosine = (rows * reference).sum(1)
    return float(cosine.min()), float(cosine.mean())


def accuracy_lines(checkpoint: Path, args, folder: Path) -> list[str]:
    """mAP / rank-1 / mINP of a trained checkpoint through each backend, one line each."""
    root = make_synthetic_reid(args.data_dir, progress=False)
    data = load_reid_dataset("market1501", root, progress=False)
    query, gallery = data["query"], data["gallery"]
    labels = (query["pid"], gallery["pid"], query["camid"], gallery["camid"])
    fp32 = export_onnx(checkpoint, folder / "model.onnx")
    int8 = quantize_onnx(fp32.path, folder / "model.int8.onnx")
    embedders = {
        "PyTorch fp32": ReIDEmbedder.from_pretrained(checkpoint, device="cpu"),
        "onnxruntime fp32": ReIDEmbedder.from_onnx(fp32.path),
        "onnxruntime int8": ReIDEmbedder.from_onnx(int8.path),
    }
    query_images, gallery_images = list(query["image"]), list(gallery["image"])
    lines = [
        f"{checkpoint} ({fp32.metadata['architecture']}, input "
        f"{tuple(fp32.metadata['input_size'])}, D={fp32.metadata['embedding_dim']}): "
        f"{len(query)} queries, {len(gallery)} gallery images, cosine distance, no flip",
        f"ONNX files: fp32 {fp32.path.stat().st_size / 1e6:.2f} MB, "
        f"int8 {int8.path.stat().st_size / 1e6:.2f} MB",
        f"{'backend':<18}{'mAP':>8}{'rank-1':>8}{'mINP':>8}   cosine to PyTorch (min / mean)",
    ]
    reference = None
    for name, embedder in embedders.items():
        query_embeddings, gallery_embeddings = embedder(query_images), embedder(gallery_images)
        both = np.concatenate([query_embeddings, gallery_embeddings])
        reference = both if reference is None else reference
        metrics = evaluate_ranking(
            query_embeddings, gallery_embeddings, *labels, metric="cosine"
        ).as_dict((1,))
        lowest, mean = min_and_mean_cosine(both, reference)
        lines.append(
            f"{name:<18}{100 * metrics['mAP']:7.2f}%{100 * metrics['rank-1']:7.2f}%"
            f"{100 * metrics['mINP']:7.2f}%   {lowest:.6f} / {mean:.6f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny configs")
    parser.add_argument("--archs", nargs="+", default=None, help="model types (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a trained checkpoint: print the accuracy of each backend instead of speed",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="synthetic dataset folder for --checkpoint (default: the demo's cache folder)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        with tempfile.TemporaryDirectory() as folder:
            for line in accuracy_lines(args.checkpoint, args, Path(folder)):
                print(line, flush=True)
        return
    known = {config.model_type: (config, model) for config, model, _ in ARCHITECTURES}
    names = args.archs or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown --archs {unknown}; expected some of {sorted(known)}")
    print(f"images/s on {args.threads} CPU threads; columns: " + "  ".join(COLUMNS))
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            for line in bench_architecture(name, *known[name], args, Path(folder)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
