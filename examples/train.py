"""Train a re-ID model: `accelerate launch examples/train.py --model la_transformer ...`.

With no arguments it trains the `tiny` preset on the embedded synthetic dataset (minutes on
a CPU). Also runs as plain `python examples/train.py`. Every flag is a field of
`reid_transformers.training.ReIDTrainingArguments`; `--help` lists them. A single `.yaml` or
`.json` argument is read as a file of flag values.
"""

from __future__ import annotations

import json
import logging
import sys

from reid_transformers.training import ReIDTrainer, parse_arguments


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_arguments(argv or ["--preset", "tiny"])
    trainer = ReIDTrainer(args)
    metrics = trainer.train()
    if trainer.accelerator.is_main_process:
        print(json.dumps(metrics, indent=2))
        print(f"checkpoints: {args.output_dir}/best, {args.output_dir}/last")
    return metrics


if __name__ == "__main__":
    main()
