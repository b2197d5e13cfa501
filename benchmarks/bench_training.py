"""Training throughput per architecture: bf16 autocast + channels-last against fp32 eager.

For every architecture at its default config and input size, images/s of the real training
step of ``ReIDTrainer``: its data loader (synthetic Market-layout JPEGs on disk, decoded and
resized by the model's image processor in the loader's workers), its batch augmentation on
the device, the model's forward and loss, backward and the optimizer step, as the trainer's
own epoch loop runs them. Batches are identity-balanced P x K (K = 4) for the models whose
loss mines positives inside a batch, plain shuffled ones for LA-Transformer. Each
architecture runs twice in the same process: fp32 eager (the baseline) and bf16 autocast
(``--mixed_precision bf16``) with channels-last weights; the ratio column is the second's
images/s over the first's. ``--warmup-steps`` optimizer steps are run first and not timed;
the clock then runs from the end of the last warm-up step to the end of the last timed one,
so it covers the loader's waits but not its workers' start.

[our choice] Recipes are the paper presets (optimizer, augmentation) with random weights
(speed does not depend on them), every parameter trainable (no blockwise unfreezing: the
cost of a run once every block is released) and no learning-rate warm-up. ``--tiny`` uses
the ``tiny`` preset's configs and input size, batch 8 and 2 timed steps: seconds on a CPU.
Without a GPU the defaults shrink to batch 16 and 1 + 3 steps (see ``DEFAULTS``).

    python benchmarks/bench_training.py [--device cuda|cpu] [--archs pan hat ...]
        [--batch-size 64] [--steps 20] [--warmup-steps 5] [--num-workers N]
        [--identities 400] [--data-dir DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from reid_transformers.data import load_reid_dataset, make_synthetic_reid
from reid_transformers.models import ARCHITECTURES
from reid_transformers.training import (
    PRESETS,
    ReIDTrainer,
    ReIDTrainingArguments,
    apply_preset,
    build_model_and_processor,
)

_MODELS = {config.model_type: model for config, model, _ in ARCHITECTURES}
#: The two runs of every architecture, as (--mixed_precision, channels-last weights): fp32
#: eager, the baseline, then bf16 autocast with channels-last ("bf16-cl").
MODES = (("no", False), ("bf16", True))
#: Defaults per run kind: batch size, timed steps, warm-up steps and synthetic identities
#: (enough for an epoch longer than warm-up + timed steps). [our choice] On a CPU a step of
#: a full-size model takes seconds and batch 64 would need several GB, so the CPU run is
#: smaller; ``--tiny`` is the smoke run of the tests.
DEFAULTS = {
    "cuda": {"batch_size": 64, "steps": 20, "warmup_steps": 5, "identities": 400},
    "cpu": {"batch_size": 16, "steps": 3, "warmup_steps": 1, "identities": 150},
    "tiny": {"batch_size": 8, "steps": 2, "warmup_steps": 1, "identities": 16},
}


@dataclasses.dataclass
class Measurement:
    """One architecture in one mode: images per second, peak CUDA memory (GiB; None on a
    CPU, where a process-wide peak cannot be reset between runs), the model's input
    ``(height, width)`` and the trainer's sampler (``pk`` or ``random``)."""

    images_per_second: float
    peak_gib: float | None
    input_size: tuple[int, int]
    sampler: str


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", choices=list(_MODELS), default=list(_MODELS))
    parser.add_argument("--batch-size", type=int,
                        help="images per step (cuda 64, cpu 16, --tiny 8)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps (cuda 20, cpu 3, "
                        "--tiny 2)")
    parser.add_argument("--warmup-steps", type=int,
                        help="untimed steps first (cuda 5, cpu 1, --tiny 1)")
    parser.add_argument("--num-workers", type=int,
                        help="loader processes (cuda: min(8, CPU count); cpu: 0)")
    parser.add_argument("--identities", type=int,
                        help="identities of the synthetic dataset (cuda 400, cpu 150, --tiny 16)")
    parser.add_argument("--data-dir", type=Path,
                        help="where the synthetic dataset is generated or reused (default: "
                        "the package cache, one folder per set of parameters)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny configs and input size, batch 8, 2 steps: a CPU smoke run")
    options = parser.parse_args(argv)
    for name, value in DEFAULTS["tiny" if options.tiny else options.device].items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.num_workers is None:
        options.num_workers = min(8, os.cpu_count() or 1) if options.device == "cuda" else 0
    for name in ("batch_size", "steps", "warmup_steps", "identities"):
        if getattr(options, name) < 1:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= 1, got {getattr(options, name)}")
    if options.num_workers < 0:
        parser.error(f"--num-workers must be >= 0, got {options.num_workers}")
    for arch in options.archs:
        try:
            pk_batch(arch, options)
        except ValueError as error:
            parser.error(str(error))
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but torch {torch.__version__} sees no CUDA device")
    return options


def preset_name(arch: str, options: argparse.Namespace) -> str:
    return "tiny" if options.tiny else arch


def pk_batch(arch: str, options: argparse.Namespace) -> tuple[int, int] | None:
    """``(P, K)`` of ``--batch-size`` images for an architecture that trains on
    identity-balanced batches (K from its preset), None for one that takes shuffled ones.

    Raises:
        ValueError: the batch size is not a multiple of K.
    """
    if not _MODELS[arch].requires_identity_balanced_batches:
        return None
    k = PRESETS[preset_name(arch, options)].get(
        "instances_per_identity", ReIDTrainingArguments.instances_per_identity
    )
    if options.batch_size % k:
        raise ValueError(
            f"--batch-size must be a multiple of K={k} images per identity ({arch} trains "
            f"on P x K batches), got {options.batch_size}"
        )
    return options.batch_size // k, k


def training_arguments(
    arch: str, options: argparse.Namespace, mixed_precision: str, output_dir: str
) -> ReIDTrainingArguments:
    """The trainer's arguments: the architecture's preset (``tiny`` with ``--tiny``) with
    the benchmark's batch, step budget, precision and loader settings on top."""
    settings = {
        "model": arch,
        "output_dir": output_dir,
        "mixed_precision": mixed_precision,
        "max_steps": options.warmup_steps + options.steps,
        "num_workers": options.num_workers,
        "pretrained_backbone": None,
        "blockwise_unfreezing": False,
        # The rate's schedule costs nothing per step, and a budget of a few steps cannot
        # hold a preset's warm-up of several epochs (the trainer would refuse it).
        "warmup": 0,
        "progress": False,
    }
    pk = pk_batch(arch, options)
    if pk is None:
        settings.update(sampler="random", batch_size=options.batch_size)
    else:
        settings.update(sampler="pk", batch_size=None, identities_per_batch=pk[0],
                        instances_per_identity=pk[1])
    args = ReIDTrainingArguments(preset=preset_name(arch, options), **settings)
    return apply_preset(args, explicit=set(settings))


def step_end_clock(trainer: ReIDTrainer, device: str) -> list[float]:
    """A list that receives ``perf_counter()`` after every optimizer step of ``trainer``
    (after the device finished it)."""
    stamps: list[float] = []

    def record(*_) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    trainer.optimizer.optimizer.register_step_post_hook(record)
    return stamps


def measure(
    arch: str, mode: tuple[str, bool], options: argparse.Namespace, data
) -> Measurement:
    """Build a fresh trainer for ``arch`` in ``mode`` and time its epoch loop."""
    mixed_precision, channels_last = mode
    # Accelerate keeps one process-wide state, whose precision is fixed once it exists.
    AcceleratorState._reset_state(True)
    with tempfile.TemporaryDirectory(prefix="bench_training_") as output_dir:
        args = training_arguments(arch, options, mixed_precision, output_dir)
        torch.manual_seed(0)
        num_identities = data["train"].features["pid"].num_classes
        model, processor = build_model_and_processor(args, num_identities)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        trainer = ReIDTrainer(args, model=model, processor=processor, data=data)
        if trainer.accelerator.device.type != options.device:
            raise RuntimeError(f"the trainer runs on {trainer.accelerator.device}, not "
                               f"{options.device}")
        if len(trainer.sampler) <= args.max_steps:
            raise ValueError(
                f"{arch}: an epoch of the synthetic data has {len(trainer.sampler)} batches, "
                f"the run needs more than {args.max_steps}: raise --identities or lower "
                "--steps / --warmup-steps"
            )
        stamps = step_end_clock(trainer, options.device)
        if options.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # The trainer's own epoch loop, so the timed step is exactly the one training runs;
        # it stops after max_steps optimizer steps.
        trainer._train_epoch(0)
        seconds = stamps[-1] - stamps[options.warmup_steps - 1]
        peak = torch.cuda.max_memory_allocated() / 2**30 if options.device == "cuda" else None
        input_size = tuple(model.config.image_size)
        # The next run starts with this one's memory free (the trainer holds cycles).
        del trainer, model
        gc.collect()
        if options.device == "cuda":
            torch.cuda.empty_cache()
    return Measurement(options.steps * options.batch_size / seconds, peak, input_size,
                       args.sampler)


def synthetic_training_data(options: argparse.Namespace):
    """The synthetic dataset (generated once per set of parameters) as a ``DatasetDict``."""
    root = None if options.data_dir is None else options.data_dir / f"ids{options.identities}"
    root = make_synthetic_reid(root, num_identities=options.identities, progress=False)
    return load_reid_dataset("market1501", root, progress=False)


def device_description(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
    return f"cpu ({torch.get_num_threads()} threads)"


def format_row(arch: str, results: list[Measurement]) -> str:
    """One table line: the baseline's and the fast mode's images/s, their ratio, memory."""
    baseline, fast = results
    height, width = baseline.input_size
    ratio = fast.images_per_second / baseline.images_per_second
    memory = [f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-" for r in results]
    return (
        f"{arch:<16}{f'{height}x{width}':<9}{baseline.sampler:<8}"
        f"{baseline.images_per_second:>12.1f}{fast.images_per_second:>15.1f}{ratio:>7.2f}"
        f"{memory[0]:>10}{memory[1]:>13}"
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    if options.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # also on a machine that has a GPU
    data = synthetic_training_data(options)
    print(f"training throughput on {device_description(options.device)}, torch "
          f"{torch.__version__}; batch {options.batch_size}, {options.warmup_steps} warm-up + "
          f"{options.steps} timed steps, {options.num_workers} loader workers, "
          f"{len(data['train'])} synthetic training images; img/s per mode, ratio = "
          "bf16-cl / fp32, GiB = peak CUDA memory")
    print(f"{'arch':<16}{'input':<9}{'sampler':<8}{'fp32 img/s':>12}{'bf16-cl img/s':>15}"
          f"{'ratio':>7}{'fp32 GiB':>10}{'bf16-cl GiB':>13}", flush=True)
    try:
        for arch in options.archs:
            results = [measure(arch, mode, options, data) for mode in MODES]
            print(format_row(arch, results), flush=True)
    finally:
        AcceleratorState._reset_state(True)


if __name__ == "__main__":
    main()
