"""The GPU benchmark script parses, and the training-throughput benchmark runs end to end."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reid_transformers.models import ARCHITECTURES

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ROW = re.compile(
    r"^(?P<arch>\w+)\s+(?P<height>\d+)x(?P<width>\d+)\s+(?P<sampler>pk|random)\s+"
    r"(?P<fp32>[\d.]+)\s+(?P<bf16>[\d.]+)\s+(?P<ratio>[\d.]+)\s+-\s+-$"
)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_training_benchmark_tiny_run_prints_one_row_per_architecture(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "bench_training.py"), "--tiny", "--device",
               "cpu", "--data-dir", str(tmp_path)]
    # One thread: on a busy machine more threads mostly wait for each other.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "batch 8, 1 warm-up + 2 timed steps" in lines[0]
    assert lines[1].split()[:3] == ["arch", "input", "sampler"]
    rows = [ROW.match(line) for line in lines[2:]]
    assert all(rows), lines[2:]
    expected = {config.model_type: model for config, model, _ in ARCHITECTURES}
    assert [row["arch"] for row in rows] == list(expected)
    for row in rows:
        # The tiny preset's input size; LA-Transformer alone trains on shuffled batches.
        assert (row["height"], row["width"]) == ("64", "32")
        balanced = expected[row["arch"]].requires_identity_balanced_batches
        assert row["sampler"] == ("pk" if balanced else "random")
        fp32, bf16, ratio = float(row["fp32"]), float(row["bf16"]), float(row["ratio"])
        assert fp32 > 0 and bf16 > 0
        assert ratio == pytest.approx(bf16 / fp32, rel=0.05, abs=0.01)


@pytest.fixture
def bench(monkeypatch):
    """``benchmarks/bench_training.py`` imported as a module (registered while the test
    runs: its dataclass resolves annotations through ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(
        "bench_training", BENCHMARKS / "bench_training.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_training_benchmark_rejects_a_batch_that_is_not_p_times_k(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_options(["--device", "cpu", "--archs", "pan", "--batch-size", "30"])
    error = capsys.readouterr().err
    assert "--batch-size must be a multiple of K=4" in error and "got 30" in error
    # LA-Transformer trains on shuffled batches: any size is a batch.
    options = bench.parse_options(["--device", "cpu", "--archs", "la_transformer",
                                   "--batch-size", "30"])
    assert bench.pk_batch("la_transformer", options) is None
    options = bench.parse_options(["--device", "cpu", "--archs", "pan", "--batch-size", "64"])
    assert bench.pk_batch("pan", options) == (16, 4)


def test_training_benchmark_uses_the_presets_recipe_with_its_batch_on_top(bench):
    options = bench.parse_options(["--device", "cpu", "--archs", "hat"])
    assert (options.batch_size, options.steps, options.warmup_steps) == (16, 3, 1)
    options = bench.parse_options(["--device", "cpu", "--archs", "hat", "--batch-size", "64",
                                   "--steps", "20", "--warmup-steps", "5"])
    args = bench.training_arguments("hat", options, "bf16", "unused")
    # From the hat preset: the paper's optimizer and augmentation.
    assert (args.optimizer, args.learning_rate, args.erasing_probability) == ("adam", 4e-4, 0.5)
    # From the benchmark: batch 64 as 16 x 4, budget, precision, every block trainable.
    assert (args.sampler, args.identities_per_batch, args.instances_per_identity) == (
        "pk", 16, 4)
    assert (args.max_steps, args.mixed_precision) == (25, "bf16")
    assert args.pretrained_backbone is None and not args.blockwise_unfreezing
    assert args.warmup == 0  # the preset's 10 epochs would not fit the step budget
    assert args.image_size is None  # the model's default input size
    tiny = bench.parse_options(["--device", "cpu", "--tiny"])
    assert (tiny.batch_size, tiny.steps, tiny.warmup_steps) == (8, 2, 1)
    args = bench.training_arguments("la_transformer", tiny, "no", "unused")
    assert (args.sampler, args.batch_size, tuple(args.image_size)) == ("random", 8, (64, 32))
