"""Embeddings of a trained model on a 100k-image synthetic gallery, for bench_index.py.

Approximate-search recall depends on the geometry of the features, so it is measured on
what a trained re-ID model produces rather than on random vectors. This script

1. generates a synthetic re-ID dataset (`make_synthetic_reid`, Market-1501 layout) with
   ``--identities`` people, of which ``--train-identities`` form the training split, plus
   ``--distractors`` gallery images of other people (pid 0) to bring the gallery past 100k;
2. trains LA-Transformer with the ``tiny`` preset (768-d embeddings) on the training
   split for ``--epochs`` epochs (at most ``--max-minutes``), with blockwise unfreezing off
   [our choice: the few epochs that fit would otherwise leave most of the trunk frozen at
   its random initialisation]; the trainer's own evaluation runs on a 100-query subset so
   that the gallery is embedded only once;
3. embeds every query and gallery image and writes ``query``, ``gallery`` (float32),
   ``query_pids``, ``gallery_pids``, ``query_camids``, ``gallery_camids`` (int64) and
   ``settings`` (the JSON of the settings and the trained model's metrics) to ``--output``
   (.npz, written atomically).

Sizes [our choice, to fit about 25 minutes on 2 CPU cores]: 64 x 32 input (the tiny
preset's), 3,000 identities of which 1,000 train and 2,000 are searched (about 14 images
each over 2-6 cameras), 75,000 distractors.

    python benchmarks/trained_embeddings.py [--output /tmp/reid_trained_embeddings.npz]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict

import reid_transformers  # noqa: F401  (registers the architectures with the Auto classes)
from reid_transformers.data import load_reid_dataset, make_synthetic_reid
from reid_transformers.retrieval.extraction import extract_embeddings
from reid_transformers.training import ReIDTrainer, parse_arguments
from reid_transformers.utils import write_atomically

DEFAULT_OUTPUT = Path("/tmp/reid_trained_embeddings.npz")
# Queries the trainer evaluates on (with their gallery matches): a sanity check of the
# training, kept small so that the 100k gallery is embedded only once.
_TRAINER_EVAL_QUERIES = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation / training options (shared with bench_index.py's --regenerate)."""
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/reid_synthetic_100k"))
    parser.add_argument("--identities", type=int, default=3000)
    parser.add_argument("--train-identities", type=int, default=1000)
    parser.add_argument("--distractors", type=int, default=75000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)


def _trainer_split(data: DatasetDict) -> DatasetDict:
    """Training split plus a small query / gallery pair for the trainer's evaluation."""
    query = data["query"].select(range(min(_TRAINER_EVAL_QUERIES, len(data["query"]))))
    wanted = set(query["pid"])
    gallery_pids = np.asarray(data["gallery"]["pid"])
    # The queries' true matches plus every 100th other image as negatives.
    keep = np.isin(gallery_pids, list(wanted)) | (np.arange(len(gallery_pids)) % 100 == 0)
    gallery = data["gallery"].select(np.flatnonzero(keep).tolist())
    return DatasetDict(train=data["train"], query=query, gallery=gallery)


def make_trained_embeddings(args: argparse.Namespace, output: Path) -> Path:
    """Generate, train, embed and save (steps 1-3 of the module docstring); returns output."""
    started = time.perf_counter()
    root = make_synthetic_reid(
        args.data_dir,
        num_identities=args.identities,
        train_fraction=args.train_identities / args.identities,
        image_size=(64, 32),
        num_distractors=args.distractors,
        num_junk=0,
        seed=args.seed,
    )
    generated = time.perf_counter()
    data = load_reid_dataset("market1501", root, verify_images="none")
    flags = [
        "--preset", "tiny", "--model", "la_transformer",
        "--output_dir", str(output.with_suffix(".training")), "--overwrite_output_dir",
        "--epochs", str(args.epochs), "--max_minutes", str(args.max_minutes),
        "--eval_every", "0", "--blockwise_unfreezing", "false", "--seed", str(args.seed),
    ]
    trainer = ReIDTrainer(parse_arguments(flags), data=_trainer_split(data))
    metrics = trainer.train()
    trained = time.perf_counter()
    model = trainer.unwrapped_model.eval()
    embeddings = {
        split: extract_embeddings(model, data[split], trainer.processor, batch_size=256)
        for split in ("query", "gallery")
    }
    settings: dict[str, Any] = {
        **{key: (str(value) if isinstance(value, Path) else value)
           for key, value in vars(args).items()},
        "model": "la_transformer (tiny preset, 64 x 32 input)",
        "trainer_metrics_on_100_queries": {
            key: value for key, value in metrics.items() if isinstance(value, int | float)
        },
        "minutes": {
            "generation": round((generated - started) / 60, 2),
            "training": round((trained - generated) / 60, 2),
            "embedding": round((time.perf_counter() - trained) / 60, 2),
        },
        "torch_threads": torch.get_num_threads(),
    }

    def write(handle: io.BufferedWriter) -> None:
        np.savez(
            handle,
            query=embeddings["query"].astype(np.float32),
            gallery=embeddings["gallery"].astype(np.float32),
            query_pids=np.asarray(data["query"]["pid"], dtype=np.int64),
            gallery_pids=np.asarray(data["gallery"]["pid"], dtype=np.int64),
            query_camids=np.asarray(data["query"]["camid"], dtype=np.int64),
            gallery_camids=np.asarray(data["gallery"]["camid"], dtype=np.int64),
            settings=np.array(json.dumps(settings)),
        )

    write_atomically(output, write)
    print(f"wrote {output}: {json.dumps(settings)}", flush=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    add_arguments(parser)
    args = parser.parse_args()
    output = args.output
    del args.output
    make_trained_embeddings(args, output)


if __name__ == "__main__":
    main()
