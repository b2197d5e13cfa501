"""PAN forward cost against its bare ResNet-50 trunk, same run (float32 and bfloat16).

PAN (last stride 1, 384x128, 6 parts, concat fusion) vs ``ResNetBackbone`` with the same
config, batch 32, eval mode. The issue's target: PAN at most 1.3x the trunk's time per image.
First, the parameter counts of the paper's Table 2 variants (751 identities) next to the
paper's, counted on the meta device (nothing allocated).

    python benchmarks/bench_pan.py [--batch 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import inference_seconds  # noqa: E402

from reid_transformers import PANConfig, PANModel  # noqa: E402
from reid_transformers.backbones import ResNetBackbone  # noqa: E402

#: Table 2 of the paper: config overrides -> millions of parameters (751 identities).
TABLE_2 = (
    ("PAN_c, D=256", {"fusion": "concat", "pam_dim": 256}, 33.9),
    ("PAN_c, D=128", {"fusion": "concat", "pam_dim": 128}, 33.0),
    ("PAN_a, D=256", {"fusion": "add", "pam_dim": 256}, 33.5),
    ("PAN_a, D=128", {"fusion": "add", "pam_dim": 128}, 32.5),
    ("baseline (stripes, no gate, no PAM)",
     {"part_masks": "stripes", "channel_attention": "none", "part_aware_attention": False},
     27.8),
)


def print_parameter_table() -> None:
    print(f"{'Table 2 variant':<38}{'ours (M)':>10}{'paper (M)':>11}{'PLM (M)':>9}")
    for name, overrides, paper in TABLE_2:
        with torch.device("meta"):
            model = PANModel(PANConfig(num_identities=751, **overrides))
        total = sum(p.numel() for p in model.parameters()) / 1e6
        plm = sum(p.numel() for p in model.part_learning.parameters()) / 1e6
        print(f"{name:<38}{total:10.2f}{paper:11.1f}{plm:9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print_parameter_table()
    config = PANConfig()
    torch.manual_seed(0)
    model = PANModel(config).eval()
    trunk = ResNetBackbone(config).eval()
    trunk.load_state_dict(model.resnet.state_dict())
    pixels = torch.randn(args.batch, 3, *config.image_size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    trunk_params = sum(p.numel() for p in trunk.parameters()) / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{config.image_size[0]}x{config.image_size[1]}; parameters: PAN {params:.1f} M, "
          f"trunk {trunk_params:.1f} M")
    print(f"{'dtype':<10}{'trunk s/batch':>15}{'PAN s/batch':>13}{'ratio':>8}")
    for dtype in (torch.float32, torch.bfloat16):
        trunk_s = inference_seconds(lambda: trunk(pixels), dtype, args.repeats)
        pan_s = inference_seconds(lambda: model(pixels), dtype, args.repeats)
        name = str(dtype).removeprefix("torch.")
        print(f"{name:<10}{trunk_s:15.3f}{pan_s:13.3f}{pan_s / trunk_s:8.2f}")


if __name__ == "__main__":
    main()
