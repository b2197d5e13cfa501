"""AAformer forward cost against the plain ViT backbone of the same size, same run.

AAformer (ViT-B/16, 256x128, 5 part tokens, optimal-transport alignment in all 12 layers)
vs ``ViTBackbone`` with the same config, batch 32, float32, eval mode; plus the assignment
step alone (Sinkhorn + rounding for one layer's 12 heads and 2 groups). The issue's target:
AAformer at most 1.25x the backbone's time per image.

    python benchmarks/bench_aaformer.py [--batch 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time  # noqa: E402

from reid_transformers import AAformerConfig, AAformerModel  # noqa: E402
from reid_transformers.backbones import ViTBackbone  # noqa: E402
from reid_transformers.models.aaformer.optimal_transport import assign_patches  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    config = AAformerConfig()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AAformerModel(config).eval()
    backbone = ViTBackbone(config).eval()
    backbone.load_state_dict(model.vit.state_dict())
    pixels = torch.randn(args.batch, 3, *config.image_size)

    def run(module):
        def call():
            with torch.inference_mode():
                return module(pixels)

        call()
        return best_time(call, args.repeats)[0]

    vit_s = run(backbone)
    aa_s = run(model)
    rows, cols = backbone.embeddings.grid_size(*config.image_size)
    scores = torch.randn(args.batch, config.num_attention_heads, 3, rows * cols) * 20

    def assign():
        for size in config.part_granularities:
            assign_patches(scores[:, :, :size], epsilon=config.ot_epsilon,
                           iterations=config.ot_iterations)

    assign()
    assign_s = best_time(assign, 5)[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{config.image_size[0]}x{config.image_size[1]}, {rows * cols} patches")
    print(f"{'variant':<34}{'s/batch':>9}{'ms/img':>9}{'ratio':>8}")
    print(f"{'ViT-B/16 backbone (baseline)':<34}{vit_s:9.3f}{1000 * vit_s / args.batch:9.2f}"
          f"{1.0:8.2f}")
    print(f"{'AAformer':<34}{aa_s:9.3f}{1000 * aa_s / args.batch:9.2f}{aa_s / vit_s:8.2f}")
    print(f"{'assignment, one layer (all heads)':<34}{assign_s:9.4f}"
          f"{1000 * assign_s / args.batch:9.3f}")


if __name__ == "__main__":
    main()
