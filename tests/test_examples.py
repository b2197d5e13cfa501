"""The teaching examples under examples/ run as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from reid_transformers.data import load_reid_dataset, make_synthetic_reid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_accelerate_example_trains_one_epoch_and_evaluates(tmp_path):
    root = make_synthetic_reid(
        tmp_path / "synthetic", num_identities=16, image_size=(64, 32), num_distractors=4,
        num_junk=2, progress=False,
    )
    num_queries = len(load_reid_dataset("market1501", root, progress=False)["query"])
    # A separate process, as a user runs it: the example builds its own Accelerator, whose
    # process-wide state must not leak into (or come from) other tests.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_accelerate.py"), "--data_dir", str(root),
         "--num_epochs", "1", "--cpu"],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = re.findall(r"^epoch (\d+): train loss (\S+)$", done.stdout, re.MULTILINE)
    assert [epoch for epoch, _ in losses] == ["1"]
    assert 0.0 < float(losses[0][1]) < 100.0
    printed = re.search(r"^evaluation: (.*)$", done.stdout, re.MULTILINE)
    assert printed is not None, done.stdout
    metrics = dict(item.split(" ") for item in printed.group(1).split(", "))
    assert set(metrics) == {
        "mAP", "mINP", "rank-1", "rank-5", "num_valid_queries", "num_skipped_queries",
    }
    for name in ("mAP", "mINP", "rank-1", "rank-5"):
        assert 0.0 <= float(metrics[name]) <= 1.0, metrics
    assert float(metrics["rank-1"]) <= float(metrics["rank-5"])
    # Every query is counted exactly once after gathering (no repeats from padding).
    assert int(metrics["num_valid_queries"]) + int(metrics["num_skipped_queries"]) == num_queries
    assert int(metrics["num_valid_queries"]) == num_queries  # synthetic queries always match
