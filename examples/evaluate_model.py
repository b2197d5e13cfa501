"""Evaluate a checkpoint on a dataset: mAP, CMC and mINP.

    python examples/evaluate_model.py --model DIR --dataset market1501 --data_dir ... \
        [--distance cosine] [--flip] [--rerank] [--batch_size 64]

(Not named evaluate.py: a script folder on sys.path would shadow the `evaluate` package.)

The same as ``reid-transformers evaluate`` (``--help`` describes every flag), and like the
earlier version of this script it prints the results as one JSON line after the table.
Prints mAP, rank-1/5/10 and mINP under the Market-1501 protocol, optionally with flip
averaging and k-reciprocal re-ranking. `--dataset synthetic` (the default) uses the
embedded dataset. In your own code:

    from reid_transformers.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint("runs/la-market/best", data, dataset="market1501", flip=True)
    print(result.format_table())
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from reid_transformers.cli import run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate with ``argv`` (default: the command line); returns the exit code."""
    flags = list(sys.argv[1:] if argv is None else argv)
    # First, so that a --json given on the command line wins.
    return run_command("evaluate", ["--json", "-", *flags], prog="examples/evaluate_model.py")


if __name__ == "__main__":
    raise SystemExit(main())
