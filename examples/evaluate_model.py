"""Evaluate a checkpoint on a dataset: mAP, CMC and mINP.

    python examples/evaluate_model.py --model DIR --dataset market1501 --data_dir ...

(Not named evaluate.py: a script folder on sys.path would shadow the `evaluate` package.)

Prints mAP, rank-1/5/10 and mINP under the Market-1501 protocol, optionally with flip
averaging and k-reciprocal re-ranking. `--dataset synthetic` uses the embedded dataset.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoImageProcessor, AutoModel

import reid_transformers  # noqa: F401  (registers the architectures with the Auto classes)
from reid_transformers.evaluation import ReIDMetric
from reid_transformers.retrieval.extraction import extract_embeddings
from reid_transformers.training import ReIDTrainingArguments, load_training_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--distance", default="cosine", choices=("cosine", "euclidean"))
    parser.add_argument("--flip", action="store_true", help="average with mirrored images")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    parser.add_argument("--batch_size", type=int, default=64)
    options = parser.parse_args(argv)

    data = load_training_data(
        ReIDTrainingArguments(dataset=options.dataset, data_dir=options.data_dir)
    )
    model = AutoModel.from_pretrained(options.model).eval()
    processor = AutoImageProcessor.from_pretrained(options.model)
    embeddings = {
        split: extract_embeddings(
            model, data[split], processor, batch_size=options.batch_size, flip=options.flip
        )
        for split in ("query", "gallery")
    }
    metrics = ReIDMetric().compute(
        distance=options.distance,
        rerank=options.rerank,
        query_embeddings=embeddings["query"],
        query_pids=data["query"]["pid"],
        query_camids=data["query"]["camid"],
        gallery_embeddings=embeddings["gallery"],
        gallery_pids=data["gallery"]["pid"],
        gallery_camids=data["gallery"]["camid"],
    )
    metrics.pop("cmc")
    for key in ("mAP", "rank-1", "rank-5", "rank-10", "mINP"):
        print(f"{key:>8}: {100 * metrics[key]:6.2f}%")
    print(
        f"{metrics['num_valid_queries']} queries evaluated, "
        f"{metrics['num_skipped_queries']} skipped (no match in another camera)"
    )
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
