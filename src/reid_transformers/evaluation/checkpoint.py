"""Evaluating a saved checkpoint on a dataset's query / gallery split.

:func:`evaluate_checkpoint` loads a checkpoint, embeds both splits once and scores them under
the Market-1501 protocol (with k-reciprocal re-ranking if asked); the result, a
:class:`CheckpointEvaluation`, prints as a table and saves as JSON, the file
``reid-transformers card --metrics`` reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..models.auto import load_checkpoint
from ..retrieval.embedding_set import embed_readable, image_names
from ..utils import write_atomically
from .metric import ReIDMetric
from .ranking import DISTANCE_METRICS

__all__ = ["CheckpointEvaluation", "evaluate_checkpoint"]

# Headline metrics, in the order tables print them.
_TABLE_METRICS = ("mAP", "rank-1", "rank-5", "rank-10", "mINP")
# The JSON layout of `CheckpointEvaluation.to_dict`.
_EVALUATION_KEYS = (
    "model", "dataset", "distance", "flip", "metrics", "reranked_metrics", "skipped_images"
)
# The splits an evaluation embeds, in the order it reports them.
_EVALUATED_SPLITS = ("query", "gallery")


@dataclass(frozen=True)
class CheckpointEvaluation:
    """Retrieval metrics of a checkpoint on a dataset's query / gallery split.

    Metric dictionaries are what :class:`~reid_transformers.evaluation.ReIDMetric` returns:
    fractions in [0, 1] under ``mAP``, ``rank-1``, ``rank-5``, ``rank-10`` and ``mINP``, the
    CMC curve under ``cmc`` (``cmc[k - 1]`` = rank-k), and the counts
    ``num_valid_queries`` / ``num_skipped_queries``.

    Attributes:
        metrics: without re-ranking.
        reranked_metrics: with k-reciprocal re-ranking, or ``None`` if it was not run.
        model: the checkpoint (folder or Hub id); ``None`` when unknown.
        dataset: the dataset's name (e.g. ``"market1501"``, ``"synthetic"``); ``None`` when
            unknown.
        distance: ``"cosine"`` or ``"euclidean"``; ``None`` when unknown.
        flip: whether embeddings were averaged with their mirror's; ``None`` when unknown.
        skipped_images: images left out because they could not be read
            (``evaluate_checkpoint(skip_unreadable=True)``): ``"query"`` / ``"gallery"`` ->
            their files (``"row <i>"`` for an image without a path); empty when none was.
            The metrics are those of the other images.
    """

    metrics: dict[str, Any]
    reranked_metrics: dict[str, Any] | None = None
    model: str | None = None
    dataset: str | None = None
    distance: str | None = None
    flip: bool | None = None
    skipped_images: dict[str, list[str]] = field(default_factory=dict)

    def format_table(self) -> str:
        """The headline metrics in percent, one row per ranking, then the query counts and
        the count of images that could not be read."""
        columns = [key for key in _TABLE_METRICS if key in self.metrics]
        rows = [("without re-ranking", self.metrics)]
        if self.reranked_metrics is not None:
            rows.append(("with re-ranking", self.reranked_metrics))
        lines = [f"{'':<20}" + "".join(f"{key:>9}" for key in columns)]
        for label, values in rows:
            lines.append(
                f"{label:<20}"
                + "".join(
                    f"{100 * values[key]:8.2f}%" if key in values else f"{'-':>9}"
                    for key in columns
                )
            )
        if "num_valid_queries" in self.metrics and "num_skipped_queries" in self.metrics:
            lines.append(
                f"{self.metrics['num_valid_queries']} queries evaluated, "
                f"{self.metrics['num_skipped_queries']} skipped (no match in another camera)"
            )
        if self.skipped_images:
            counts = {split: len(files) for split, files in self.skipped_images.items()}
            total = sum(counts.values())
            lines.append(
                f"{total} image{'s' if total != 1 else ''} could not be read and "
                f"{'were' if total != 1 else 'was'} left out ("
                + ", ".join(f"{split} {count}" for split, count in counts.items())
                + ")"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``model``, ``dataset``, ``distance``, ``flip``, ``metrics``,
        ``reranked_metrics`` and ``skipped_images``."""
        return {key: getattr(self, key) for key in _EVALUATION_KEYS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CheckpointEvaluation:
        """Read :meth:`to_dict`'s layout, or a bare metrics dictionary (``{"mAP": ...}``, as
        ``ReIDMetric.compute`` returns it), whose dataset and settings are then unknown.

        Raises:
            ValueError: neither layout, or metrics that are not a mapping with ``mAP``.
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"expected a JSON object of evaluation results, got {type(values).__name__}"
            )
        if "metrics" not in values:
            if "mAP" not in values:
                raise ValueError(
                    f"expected evaluation results (with a 'metrics' entry) or a metrics "
                    f"dictionary with 'mAP'; got the keys {sorted(values)}"
                )
            return cls(metrics=dict(values))
        unknown = sorted(set(values) - set(_EVALUATION_KEYS))
        if unknown:
            raise ValueError(
                f"unknown entries {unknown} in evaluation results; expected {_EVALUATION_KEYS}"
            )
        for key in ("metrics", "reranked_metrics"):
            value = values.get(key)
            if key == "reranked_metrics" and value is None:
                continue
            if not isinstance(value, Mapping) or "mAP" not in value:
                raise ValueError(f"{key!r} must be a dictionary of metrics with 'mAP'")
        for key in ("model", "dataset", "distance"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ValueError(f"{key!r} must be a string or null, got {values[key]!r}")
        if values.get("distance") not in (None, *DISTANCE_METRICS):
            raise ValueError(
                f"'distance' must be one of {DISTANCE_METRICS} or null, got {values['distance']!r}"
            )
        if values.get("flip") not in (None, True, False):
            raise ValueError(f"'flip' must be true, false or null, got {values['flip']!r}")
        # Results saved before images could be skipped have no entry: none was.
        skipped = values.get("skipped_images") or {}
        if not isinstance(skipped, Mapping) or any(
            split not in _EVALUATED_SPLITS
            or not isinstance(files, list)
            or not all(isinstance(name, str) for name in files)
            for split, files in skipped.items()
        ):
            raise ValueError(
                f"'skipped_images' must map query/gallery to lists of files, got {skipped!r}"
            )
        reranked = values.get("reranked_metrics")
        return cls(
            metrics=dict(values["metrics"]),
            reranked_metrics=dict(reranked) if reranked is not None else None,
            model=values.get("model"),
            dataset=values.get("dataset"),
            distance=values.get("distance"),
            flip=values.get("flip"),
            skipped_images={split: list(files) for split, files in skipped.items()},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (replacing an older file)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomically(
            Path(path), lambda handle: handle.write(text.encode("utf-8")), overwrite=True
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CheckpointEvaluation:
        """Read a JSON file in either layout of :meth:`from_dict`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not JSON, or neither layout (the message names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metrics file {path} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error


def evaluate_checkpoint(
    model: str | os.PathLike[str],
    data: Mapping[str, Dataset],
    *,
    dataset: str | None = None,
    distance: str = "cosine",
    flip: bool = False,
    rerank: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> CheckpointEvaluation:
    """Evaluate a checkpoint on ``data["query"]`` against ``data["gallery"]``.

    Both splits are embedded once; metrics follow the Market-1501 protocol (same-identity
    gallery images from the query's camera are ignored, queries without a remaining match
    are skipped and counted). With ``rerank`` the metrics are reported both without and with
    k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3), from the same embeddings.

    Args:
        model: checkpoint folder or Hub id (see
            :func:`~reid_transformers.models.auto.load_checkpoint`).
        data: a mapping with ``query`` and ``gallery`` datasets holding ``image``, ``pid``
            and ``camid`` columns (what ``load_reid_dataset`` returns).
        dataset: the dataset's name, recorded in the result (e.g. for the model card).
        distance: ``"cosine"`` or ``"euclidean"``.
        flip: average every embedding with its horizontal mirror's.
        rerank: also compute the re-ranked metrics.
        batch_size, num_workers: embedding batch size and image-decoding processes.
        device: where the model runs; default ``cuda`` if available, else ``cpu``.
        progress: show progress bars while embedding.
        skip_unreadable: leave out the images that cannot be read (missing, truncated,
            refused by the processor) instead of stopping at the first: each is logged, the
            metrics are those of the other images, and the result lists them in
            ``skipped_images``. Load the data with ``verify_images="none"`` for this, or
            the dataset's own verification stops at them first.

    Raises:
        ValueError: an unknown ``distance``, ``data`` lacking a split or column, an image
            that cannot be read (without ``skip_unreadable``), or a split none of whose
            images could be read.
        FileNotFoundError / NotADirectoryError: see
            :func:`~reid_transformers.models.auto.load_checkpoint`.
    """
    if distance not in DISTANCE_METRICS:
        raise ValueError(f"distance must be one of {DISTANCE_METRICS}, got {distance!r}")
    for split in ("query", "gallery"):
        if split not in data:
            raise ValueError(f"data has no {split!r} split (splits: {sorted(data)})")
        missing = [c for c in ("image", "pid", "camid") if c not in data[split].column_names]
        if missing:
            raise ValueError(f"the {split!r} split lacks the column(s) {missing}")
    loaded, processor = load_checkpoint(model, device=device)
    inputs: dict[str, np.ndarray] = {}
    skipped_images: dict[str, list[str]] = {}
    options = dict(batch_size=batch_size, flip=flip, num_workers=num_workers,
                   progress=progress, skip_unreadable=skip_unreadable)
    for split in _EVALUATED_SPLITS:
        embeddings, readable = embed_readable(loaded, data[split], processor, **options)
        if not readable.any():
            raise ValueError(
                f"none of the {len(readable)} {split!r} images could be read; there is "
                f"nothing to evaluate"
            )
        if not readable.all():
            skipped_images[split] = image_names(data[split], np.flatnonzero(~readable))
        inputs[f"{split}_embeddings"] = embeddings[readable]
        inputs[f"{split}_pids"] = np.asarray(data[split]["pid"])[readable]
        inputs[f"{split}_camids"] = np.asarray(data[split]["camid"])[readable]
    metric = ReIDMetric()
    plain = metric.compute(distance=distance, **inputs)
    reranked = metric.compute(distance=distance, rerank=True, **inputs) if rerank else None
    return CheckpointEvaluation(
        metrics=plain,
        reranked_metrics=reranked,
        model=str(model),
        dataset=dataset,
        distance=distance,
        flip=flip,
        skipped_images=skipped_images,
    )
