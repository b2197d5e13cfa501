"""Train a re-ID model: `accelerate launch examples/train.py --model la_transformer ...`.

With no arguments it trains the `tiny` preset on the embedded synthetic dataset (about two
minutes on a CPU). Also runs as plain `python examples/train.py`. Every flag is a field of
`reid_transformers.training.ReIDTrainingArguments` (`--help` lists them); a single `.yaml`
or `.json` argument is read as a file of flag values. The same as `reid-transformers train`.
"""

from __future__ import annotations

import sys

from reid_transformers.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:] or ["--preset", "tiny"], prog="examples/train.py"))
