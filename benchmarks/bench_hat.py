"""HAT parameters and throughput against its bare ResNet-50 trunk, same run.

HAT (default config: last stride 1, 256x128, TFC depths 3/3/6) vs ``ResNetBackbone`` with the
same config and weights, batch 32, eval mode, float32 and bfloat16 autocast. Parameters are
listed per component, with 751 identity heads (Market-1501) as the released checkpoint has;
the released code counts ~167 M effective parameters (plus ~50 M it never uses).

    python benchmarks/bench_hat.py [--batch 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import inference_seconds  # noqa: E402

from reid_transformers import HATConfig, HATModel  # noqa: E402
from reid_transformers.backbones import ResNetBackbone  # noqa: E402

COMPONENTS = {
    "trunk (ResNet-50)": ("resnet.",),
    "level bottlenecks": ("bottlenecks.",),
    "TFC transformers": ("calibrations.",),
    "neighbourhood adjustment": ("adjustments.",),
    "BNNeck heads (751 ids)": ("level_necks.", "global_neck."),
}


def count(model: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> float:
    """Millions of parameters whose names start with one of ``prefixes``."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes)) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = HATConfig(num_identities=751)
    model = HATModel(config).eval()
    trunk = ResNetBackbone(config).eval()
    trunk.load_state_dict(model.resnet.state_dict())
    print("parameters (M):")
    for name, prefixes in COMPONENTS.items():
        print(f"  {name:<28}{count(model, prefixes):8.2f}")
    print(f"  {'total':<28}{count(model):8.2f}   (released code: ~167 effective)")

    pixels = torch.randn(args.batch, 3, *config.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{config.image_size[0]}x{config.image_size[1]}")
    print(f"{'dtype':<10}{'trunk img/s':>13}{'HAT img/s':>11}{'time ratio':>12}")
    for dtype in (torch.float32, torch.bfloat16):
        trunk_s = inference_seconds(lambda: trunk(pixels), dtype, args.repeats)
        hat_s = inference_seconds(lambda: model(pixels), dtype, args.repeats)
        name = str(dtype).removeprefix("torch.")
        print(f"{name:<10}{args.batch / trunk_s:13.1f}{args.batch / hat_s:11.1f}"
              f"{hat_s / trunk_s:12.2f}")

if __name__ == "__main__":
    main()
