"""LA-Transformer (ViT-B/16) inference throughput against the matmul-bound floor.

For each input size and precision, images/s of ``LATransformerModel`` in eval mode (batch
32, random weights: speed does not depend on them) is printed beside the ceiling the same
run measures: the model's matmul FLOPs per image divided by this machine's GEMM rate at the
shapes the model uses (float32, and bfloat16 under CPU autocast). The ratio is the fraction
of the matmul-bound speed the model reaches. bfloat16 embeddings are compared with float32
ones by cosine similarity.

    python benchmarks/bench_inference.py [--batch 32] [--repeats 2] [--sizes 224x224 256x128]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time  # noqa: E402

from reid_transformers import LATransformerConfig, LATransformerModel  # noqa: E402


def matmul_flops_per_image(config: LATransformerConfig, height: int, width: int) -> float:
    """Multiply-adds x 2 of the patch embedding, attention and MLP matmuls of one image."""
    rows = (height - config.patch_size) // config.patch_stride + 1
    cols = (width - config.patch_size) // config.patch_stride + 1
    patches, d = rows * cols, config.hidden_size
    tokens = patches + 1
    patch_embed = patches * (config.num_channels * config.patch_size**2) * d
    per_layer = (
        tokens * d * 3 * d  # qkv
        + 2 * tokens * tokens * d  # scores and weighted values
        + tokens * d * d  # output projection
        + 2 * tokens * d * config.intermediate_size  # MLP
    )
    return 2.0 * (patch_embed + config.num_hidden_layers * per_layer)


def gemm_rate(rows: int, config: LATransformerConfig, dtype: torch.dtype) -> float:
    """FLOP/s of the model's dominant GEMM shapes (token rows x width x MLP width)."""
    d, hidden = config.hidden_size, config.intermediate_size
    a = torch.randn(rows, d, dtype=dtype)
    w1 = torch.randn(d, hidden, dtype=dtype)
    w2 = torch.randn(hidden, d, dtype=dtype)

    def run():
        return (a @ w1) @ w2

    run()
    seconds, _ = best_time(run, 5)
    return 2.0 * 2 * rows * d * hidden / seconds


def throughput(model, pixels, dtype, repeats):
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()
    )

    def run():
        with torch.inference_mode(), autocast:
            return model(pixels).embeddings.float()

    run()  # warm-up
    seconds, embeddings = best_time(run, repeats)
    return len(pixels) / seconds, embeddings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["224x224", "256x128"])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'input':<9}{'dtype':<10}{'img/s':>8}{'floor img/s':>13}{'of floor':>10}"
          f"{'min cos':>9}")
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        config = LATransformerConfig(image_size=(height, width))
        torch.manual_seed(0)
        model = LATransformerModel(config).eval()
        pixels = torch.randn(args.batch, 3, height, width)
        flops = matmul_flops_per_image(config, height, width)
        tokens = args.batch * ((height // 16) * (width // 16) + 1)
        reference = None
        for dtype in (torch.float32, torch.bfloat16):
            # The best of two measurements: a single GEMM timing on a shared machine can
            # understate the rate, which would flatter the model.
            rate = max(gemm_rate(tokens, config, dtype) for _ in range(2))
            images_per_s, embeddings = throughput(model, pixels, dtype, args.repeats)
            if reference is None:
                reference = embeddings
            cosine = F.cosine_similarity(embeddings, reference, dim=1).min()
            floor = rate / flops
            name = str(dtype).removeprefix("torch.")
            print(
                f"{size:<9}{name:<10}{images_per_s:8.1f}{floor:13.1f}"
                f"{images_per_s / floor:9.0%}{float(cosine):9.5f}"
            )
    flops_224 = matmul_flops_per_image(LATransformerConfig(), 224, 224)
    print(f"(matmul FLOPs per image at 224x224: {flops_224 / 1e9:.1f} G)")


if __name__ == "__main__":
    main()
