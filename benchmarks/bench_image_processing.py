"""ReIDImageProcessor speed: PIL path vs the batched uint8 tensor fast path, same run.

Preprocesses N crops of 128x64 (Market-1501 style, upscaled to 256x128) and reports
images/s and the speed-up over the PIL path fed PIL images (the baseline), with
transformers' own ViTImageProcessorPil at the same settings as an outside reference.
Then the largest disagreement between the fast path and the PIL path, in grey levels
before normalisation and in normalised units, for that upscale and for a downscale.

    python benchmarks/bench_image_processing.py [--num-images 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time  # noqa: E402

from reid_transformers.image_processing_reid import ReIDImageProcessor  # noqa: E402


def pedestrian_like_crops(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(count, height, width, 3)`` uint8: smooth gradients, hard-edged blocks, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    crops = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        base = rng.uniform(0, 255, 3) * (0.5 + 0.5 * y[..., None]) + 40 * x[..., None]
        top = rng.integers(0, height // 2)
        base[top : top + height // 3, width // 4 : 3 * width // 4] = rng.uniform(0, 255, 3)
        base += rng.normal(0, 6, base.shape)
        crops[index] = np.clip(np.rint(base), 0, 255)
    return crops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    crops = pedestrian_like_crops(args.num_images, 128, 64)
    pil_images = [Image.fromarray(crop) for crop in crops]
    arrays = list(crops)
    batch = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    processor = ReIDImageProcessor()
    reference = ViTImageProcessorPil(
        size={"height": 256, "width": 128},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )

    variants = [
        ("PIL path, list of PIL images (baseline)", lambda: processor(pil_images)),
        ("PIL path, list of uint8 HWC arrays", lambda: processor(arrays)),
        ("transformers ViTImageProcessorPil", lambda: reference(pil_images)),
        ("fast path via __call__ (uint8 BCHW)", lambda: processor(batch, return_tensors="pt")),
        ("preprocess_tensor_batch (uint8 BCHW)", lambda: processor.preprocess_tensor_batch(batch)),
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.num_images} images 128x64 -> 256x128, best of {args.repeats}"
    )
    print(f"{'variant':<42} {'seconds':>8} {'images/s':>10} {'speed-up':>9}")
    baseline_s = None
    for name, run in variants:
        seconds, _ = best_time(run, args.repeats)
        baseline_s = baseline_s or seconds
        print(
            f"{name:<42} {seconds:8.4f} {args.num_images / seconds:10.0f} "
            f"{baseline_s / seconds:8.2f}x"
        )

    unnormalised = ReIDImageProcessor(do_rescale=False, do_normalize=False)
    # The timed case upscales; a downscale from odd sizes exercises the antialias filter too.
    for label, images in [
        ("upscale 128x64", crops),
        ("downscale 397x171", pedestrian_like_crops(32, 397, 171, seed=1)),
    ]:
        tensors = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        as_list = list(images)
        level_gap = np.abs(
            unnormalised.preprocess_tensor_batch(tensors).numpy()
            - unnormalised(as_list)["pixel_values"]
        )
        normalised_gap = np.abs(
            processor.preprocess_tensor_batch(tensors).numpy() - processor(as_list)["pixel_values"]
        )
        print(
            f"fast vs PIL path, {label}: max |diff| {level_gap.max():.0f} grey level(s) before "
            f"normalisation ({(level_gap > 0).mean():.3%} of values differ), "
            f"{normalised_gap.max():.4f} after"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
