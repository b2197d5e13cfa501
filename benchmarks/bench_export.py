"""PyTorch vs onnxruntime throughput and parity of the exported re-ID models, one table.

For each architecture (default configuration at its default input size, or ``--tiny`` for
the test suite's tiny ones): images per second at batch 1 and 32 with PyTorch eager fp32,
PyTorch bf16 autocast, onnxruntime fp32 and onnxruntime int8 (dynamic quantisation of the
MatMul/Gemm weights by ``onnxruntime.quantization.quantize_dynamic``), plus the fp32 export's
max abs difference / min cosine against PyTorch at batch 1, 7 and 32, and the int8 model's
min cosine against PyTorch. Random weights: the figures are costs and agreement, not
accuracy. An architecture that fails to export is reported as such and the run goes on.

    python benchmarks/bench_export.py [--tiny] [--archs pan hat] [--repeats 3] [--threads N]
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

from reid_transformers.deployment.export import (  # noqa: E402
    compare_with_onnxruntime,
    export_onnx,
)
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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = TINY[name] if args.tiny else {}
    torch.manual_seed(0)
    model = model_class(config_class(**settings)).eval()
    path = folder / f"{name}.onnx"
    try:
        result = export_onnx(model, path)
    except RuntimeError as error:
        return [f"{name}: export failed: {str(error).splitlines()[0][:200]}"]
    parity = compare_with_onnxruntime(model, path, (1, 7, 32))
    int8_path = folder / f"{name}.int8.onnx"
    quantize_dynamic(str(path), str(int8_path), weight_type=QuantType.QInt8)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny configs")
    parser.add_argument("--archs", nargs="+", default=None, help="model types (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
