"""PRCT forward cost: the whole model against its bare ResNet-50 trunk, and the Part
Aggregation Transformer with linear (Linformer) attention against full attention.

1. PRCT (default config: 256x128, last stride 1, D = 2048, 12 layers x 8 heads, linear
   attention with k = 64, num_identities 0) vs ``ResNetBackbone`` with the same weights,
   batch 32, eval mode, float32 and bfloat16 autocast: time per batch, images per second,
   ratio, parameters.
2. The Part Aggregation Transformer alone on ``n = 1 + 16 * 8 = 129`` tokens of width 2048:
   ``attention="linear"`` (k = 64) vs ``attention="full"`` at the same width and with the
   same weights (SDPA kernels): time per batch, ratio, and the attention-core FLOPs of each.

Attention-core FLOPs per layer and image (2 FLOPs per multiply-add, D = heads * head_dim):
full ``QK^T`` + ``AV`` = ``4 n^2 D``; linear ``E^T K`` + ``F^T V`` + ``QK'^T`` + ``AV'`` =
``8 n k D``. Linear attention is cheaper only when ``n > 2k``: at n = 129, k = 64 the two
are equal to within 1%, and both are ~2% of a layer's FLOPs (the qkv/output projections
and the feed-forward, ``2 n D (4 D + 2 I)``, dominate). The table also lists longer
sequences (analytic FLOPs only) to show where Linformer's saving starts.

    python benchmarks/bench_prct.py [--batch 32] [--repeats 2] [--dtypes float32 bfloat16]
                                    [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import inference_seconds  # noqa: E402

from reid_transformers import PRCTConfig, PRCTModel  # noqa: E402
from reid_transformers.backbones import ResNetBackbone  # noqa: E402
from reid_transformers.models.prct import PartAggregationTransformer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def attention_core_flops(tokens: int, width: int, attention: str, k: int) -> int:
    """FLOPs of one layer's attention core for one image (projections excluded)."""
    if attention == "full":
        return 4 * tokens * tokens * width
    return 8 * tokens * k * width


def layer_linear_flops(tokens: int, width: int, intermediate: int) -> int:
    """FLOPs of one layer's qkv, output projection and feed-forward for one image."""
    return 2 * tokens * width * (4 * width + 2 * intermediate)


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    config = PRCTConfig(num_identities=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = PRCTModel(config).eval().to(device)
    trunk = ResNetBackbone(config).eval().to(device)
    trunk.load_state_dict(model.resnet.state_dict())
    full_config = PRCTConfig(num_identities=0, attention="full")
    full_config._attn_implementation = "sdpa"
    linear_transformer = model.transformer
    full_transformer = PartAggregationTransformer(full_config).eval().to(device)
    # Same weights in both transformers; only the linear one's E, F are its own.
    missing = linear_transformer.load_state_dict(full_transformer.state_dict(), strict=False)
    assert all(key.endswith(("key_projection", "value_projection")) for key in missing.missing_keys)

    pixels = torch.randn(args.batch, 3, *config.image_size, device=device)
    tokens = torch.randn(args.batch, config.num_tokens, config.hidden_size, device=device)

    def timed(call_module, dtype):
        return inference_seconds(call_module, dtype, args.repeats, device)

    rows, cols = config.part_grid
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {config.image_size[0]}x{config.image_size[1]} -> {rows}x{cols} "
        f"parts, n = {config.num_tokens} tokens, D = {config.hidden_size}, "
        f"{config.num_hidden_layers} layers x {config.num_attention_heads} heads, "
        f"k = {config.linformer_k}"
    )
    print(
        f"parameters (M): PRCT {count(model):.1f} = trunk {count(model.resnet):.1f} + "
        f"embeddings {count(model.embeddings):.2f} + transformer {count(linear_transformer):.1f}"
        f" + neck {count(model.neck):.3f}; full-attention transformer "
        f"{count(full_transformer):.1f} (E, F add "
        f"{count(linear_transformer) - count(full_transformer):.2f})"
    )

    print("\n1. PRCT vs its ResNet-50 trunk (same run)")
    print(
        f"{'dtype':<10}{'trunk s/batch':>15}{'img/s':>9}{'PRCT s/batch':>14}{'img/s':>9}"
        f"{'ratio':>8}"
    )
    for name in args.dtypes:
        dtype = DTYPES[name]
        trunk_s = timed(lambda: trunk(pixels), dtype)
        prct_s = timed(lambda: model(pixels), dtype)
        print(
            f"{name:<10}{trunk_s:15.3f}{args.batch / trunk_s:9.1f}{prct_s:14.3f}"
            f"{args.batch / prct_s:9.1f}{prct_s / trunk_s:8.2f}"
        )

    print(
        f"\n2. Part Aggregation Transformer alone, n = {config.num_tokens}, "
        f"D = {config.hidden_size} (same weights; SDPA)"
    )
    print(f"{'dtype':<10}{'full s/batch':>14}{'linear s/batch':>16}{'linear/full':>13}")
    grid = config.part_grid
    for name in args.dtypes:
        dtype = DTYPES[name]
        full_s = timed(lambda: full_transformer(tokens, grid=grid), dtype)
        linear_s = timed(lambda: linear_transformer(tokens, grid=grid), dtype)
        print(f"{name:<10}{full_s:14.3f}{linear_s:16.3f}{linear_s / full_s:13.3f}")

    width, k, inner = config.hidden_size, config.linformer_k, config.intermediate_size
    print(f"\nattention-core GFLOPs per image and layer (k = {k}); layer = projections + FFN")
    print(f"{'n':>6}{'full':>10}{'linear':>10}{'lin/full':>10}{'core share of layer (full)':>28}")
    for n in sorted({config.num_tokens, 193, 257, 513, 1025}):
        full_f = attention_core_flops(n, width, "full", k)
        linear_f = attention_core_flops(n, width, "linear", k)
        share = full_f / (full_f + layer_linear_flops(n, width, inner))
        marker = "  <- 256x128" if n == config.num_tokens else ""
        print(
            f"{n:6d}{full_f / 1e9:10.3f}{linear_f / 1e9:10.3f}{linear_f / full_f:10.3f}"
            f"{share:28.1%}{marker}"
        )


if __name__ == "__main__":
    main()
