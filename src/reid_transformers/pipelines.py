"""Checkpoint-level workflows: load, evaluate, extract embeddings to a file, write the model card.

Each function here is one step a user runs on a saved checkpoint (a folder written by
``save_pretrained`` with its image processor, or a Hub id), and is what the ``reid-transformers``
command and the examples call:

* :func:`load_checkpoint`: model and image processor, with clear errors for a missing or
  incomplete checkpoint (:func:`checkpoint_source` makes the same checks without loading).
* :func:`evaluate_checkpoint`: mAP / CMC / mINP under the Market-1501 protocol, as a
  :class:`CheckpointEvaluation` that prints as a table and saves as JSON.
* :func:`extract_checkpoint_embeddings`: embeddings of one or more datasets, as an
  :class:`EmbeddingSet` that saves to and loads from an ``.npz`` file.
* :func:`write_model_card`: renders the checkpoint's model card into its ``README.md``, keeping
  the card inputs saved beside it (``card_inputs.json``: recipe, data, origin, metrics) unless
  replaced.

This module sits above ``evaluation``, ``retrieval``, ``models`` and ``hub``; none of them
imports it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedModel

from . import models as _models  # noqa: F401  (registers the architectures with the Auto classes)
from .evaluation import DISTANCE_METRICS, ReIDMetric
from .hub import KNOWN_DATASETS, CardInputs, save_card
from .modeling_utils import CorruptCheckpointError, check_saved_weights
from .retrieval.extraction import ImageProcessor, extract_embeddings
from .utils import write_atomically

__all__ = [
    "EMBEDDING_FILE_KEYS",
    "CheckpointEvaluation",
    "EmbeddingSet",
    "ModelCardUpdate",
    "checkpoint_source",
    "evaluate_checkpoint",
    "extract_checkpoint_embeddings",
    "load_checkpoint",
    "write_model_card",
]

_CONFIG_NAME = "config.json"
_PROCESSOR_NAME = "preprocessor_config.json"
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json")
_CARD_NAME = "README.md"
# Trainer checkpoints are `<run>/best` and `<run>/last`: the run's folder names the model.
_TRAINER_CHECKPOINT_NAMES = ("best", "last")
# Headline metrics, in the order tables print them.
_TABLE_METRICS = ("mAP", "rank-1", "rank-5", "rank-10", "mINP")
_RERANKED_SUFFIX = " (re-ranked)"
# The JSON layout of `CheckpointEvaluation.to_dict`.
_EVALUATION_KEYS = (
    "model", "dataset", "distance", "flip", "metrics", "reranked_metrics", "skipped_images"
)
# The splits an evaluation embeds, in the order it reports them.
_EVALUATED_SPLITS = ("query", "gallery")


# ---------------------------------------------------------------------- loading
def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    return resolved


def checkpoint_source(model: str | os.PathLike[str]) -> str:
    """Check where :func:`load_checkpoint` would load ``model`` from, without loading it.

    A local path must be a folder holding ``config.json``, ``preprocessor_config.json`` and
    ``model.safetensors`` (or a sharded safetensors index). A path that does not exist is
    taken as a Hub id if it has that form (``name`` or ``namespace/name``); whether the Hub
    has it is only known when loading.

    Returns:
        The folder or Hub id as a string.

    The weights files' headers are read (not their tensors), so that a damaged file fails here,
    before any dataset is loaded, rather than after.

    Raises:
        FileNotFoundError: the folder does not exist (and is not a Hub id), or lacks files
            (all missing ones are named).
        NotADirectoryError: ``model`` is a file.
        CorruptCheckpointError: a weights file is not a complete safetensors file (named).
    """
    path = Path(model)
    if not path.exists():
        try:
            validate_repo_id(str(model))
        except HFValidationError:
            raise FileNotFoundError(f"checkpoint folder {path} does not exist") from None
        return str(model)
    if not path.is_dir():
        raise NotADirectoryError(f"checkpoint {path} is a file; expected a checkpoint folder")
    missing = [name for name in (_CONFIG_NAME, _PROCESSOR_NAME) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _WEIGHT_NAMES):
        missing.append(f"{_WEIGHT_NAMES[0]} (or {_WEIGHT_NAMES[1]} with its shards)")
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; write it with "
            f"model.save_pretrained(folder) and processor.save_pretrained(folder)"
        )
    check_saved_weights(path)
    return str(path)


def load_checkpoint(
    model: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, ImageProcessor]:
    """The model (in eval mode, on ``device``) and image processor of a saved checkpoint.

    Args:
        model: a folder written by ``model.save_pretrained`` and ``processor.save_pretrained``,
            or a Hub id when no such local path exists (see :func:`checkpoint_source`).
        device: where to put the model; default ``cuda`` if available, else ``cpu``.

    Raises:
        FileNotFoundError: the folder does not exist or lacks files (see
            :func:`checkpoint_source`), or a Hub id could not be loaded (offline, unknown).
        NotADirectoryError: ``model`` is a file.
        ValueError: an unknown or unavailable ``device``, or a local checkpoint that
            transformers cannot read (e.g. a malformed ``config.json``).
        CorruptCheckpointError: a weights file that is damaged (not a complete safetensors
            file) or holds weights that are not finite; the file is named.
    """
    target = _device(device)
    source = checkpoint_source(model)
    local = Path(source).is_dir()
    try:
        loaded = AutoModel.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except CorruptCheckpointError:
        raise  # already names the file, also one downloaded from the Hub
    except OSError as error:
        # transformers' message spans several lines; its first says what failed.
        first_line = str(error).strip().splitlines()[0]
        if local:
            raise ValueError(f"cannot load checkpoint folder {source}: {first_line}") from error
        raise FileNotFoundError(
            f"checkpoint {source!r} is not a local folder, and loading it from the Hub failed: "
            f"{first_line}"
        ) from error
    return loaded.to(target).eval(), processor


# ---------------------------------------------------------------------- evaluation
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


def _embed_readable(model, dataset: Dataset, processor, **options) -> tuple[np.ndarray, np.ndarray]:
    """``extract_embeddings`` of ``dataset`` and which rows were readable: with
    ``skip_unreadable`` it leaves NaN rows for the skipped images, and only for them."""
    embeddings = extract_embeddings(model, dataset, processor, **options)
    return embeddings, ~np.isnan(embeddings).any(axis=1)


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
        model: checkpoint folder or Hub id (see :func:`load_checkpoint`).
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
        FileNotFoundError / NotADirectoryError: see :func:`load_checkpoint`.
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
        embeddings, readable = _embed_readable(loaded, data[split], processor, **options)
        if not readable.any():
            raise ValueError(
                f"none of the {len(readable)} {split!r} images could be read; there is "
                f"nothing to evaluate"
            )
        if not readable.all():
            skipped_images[split] = _image_names(data[split], np.flatnonzero(~readable))
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


def _image_names(dataset: Dataset, rows: np.ndarray) -> list[str]:
    """How results name the images at ``rows``: the ``path`` column, else ``"row <i>"``."""
    paths = None
    if "path" in dataset.column_names:
        paths = list(dataset.select(rows.tolist())["path"])
    return [
        paths[i] if paths is not None and paths[i] else f"row {row}"
        for i, row in enumerate(rows.tolist())
    ]


# ---------------------------------------------------------------------- embeddings files
#: Arrays of an embeddings file written by :meth:`EmbeddingSet.save`.
EMBEDDING_FILE_KEYS = (
    "embeddings",
    "pids",
    "camids",
    "paths",
    "splits",
    "model",
    "flip",
    "skipped_paths",
    "skipped_splits",
)
# Arrays that files written before images could be skipped lack (none was skipped then).
_OPTIONAL_EMBEDDING_KEYS = ("skipped_paths", "skipped_splits")


@dataclass(frozen=True)
class EmbeddingSet:
    """Embeddings of a set of images with their identities, cameras, files and splits.

    Attributes:
        embeddings: ``(N, D)`` float32, row ``i`` for image ``i``.
        pids: ``(N,)`` int64 person identities as the dataset names them (train splits too:
            not the 0..C-1 training labels); -1 = unknown.
        camids: ``(N,)`` int64 cameras, 0-based; -1 = unknown.
        paths: ``(N,)`` str image files; ``""`` = unknown.
        splits: ``(N,)`` str, the split (or ``"images"`` for a folder) each row came from.
        model: the checkpoint that produced the embeddings.
        flip: whether they are averaged with the mirrored images' embeddings.
        skipped_paths: ``(S,)`` str, the images left out because they could not be read
            (``extract_checkpoint_embeddings(skip_unreadable=True)``), ``"row <i>"`` for one
            without a path; they have no row above.
        skipped_splits: ``(S,)`` str, the split each skipped image belonged to.

    Arrays are converted on construction (lists are fine); mismatched lengths raise
    ``ValueError``.
    """

    embeddings: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: np.ndarray
    splits: np.ndarray
    model: str = ""
    flip: bool = False
    skipped_paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.str_))
    skipped_splits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.str_))

    def __post_init__(self) -> None:
        embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {embeddings.shape}")
        arrays = {
            "embeddings": embeddings,
            "pids": np.asarray(self.pids, dtype=np.int64).reshape(-1),
            "camids": np.asarray(self.camids, dtype=np.int64).reshape(-1),
            "paths": np.asarray(self.paths, dtype=np.str_).reshape(-1),
            "splits": np.asarray(self.splits, dtype=np.str_).reshape(-1),
        }
        lengths = {name: len(array) for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every array needs one entry per image; got lengths {lengths}")
        skipped = {
            "skipped_paths": np.asarray(self.skipped_paths, dtype=np.str_).reshape(-1),
            "skipped_splits": np.asarray(self.skipped_splits, dtype=np.str_).reshape(-1),
        }
        if len(skipped["skipped_paths"]) != len(skipped["skipped_splits"]):
            raise ValueError(
                f"skipped_paths and skipped_splits need one entry per skipped image; got "
                f"{len(skipped['skipped_paths'])} and {len(skipped['skipped_splits'])}"
            )
        for name, array in {**arrays, **skipped}.items():
            object.__setattr__(self, name, array)
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "flip", bool(self.flip))

    def __len__(self) -> int:
        return len(self.embeddings)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write an uncompressed ``.npz`` file (arrays :data:`EMBEDDING_FILE_KEYS`) atomically.

        It is readable with ``np.load(path)`` (no pickles) or :meth:`load`. Strings are stored
        as fixed-width unicode arrays; ``model`` and ``flip`` as 0-d arrays.

        Raises:
            ValueError: ``path`` does not end in ``.npz``.
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"an embeddings file must end in .npz, got {str(path)!r}")
        arrays = {
            "embeddings": self.embeddings,
            "pids": self.pids,
            "camids": self.camids,
            "paths": self.paths,
            "splits": self.splits,
            "model": np.asarray(self.model),
            "flip": np.asarray(self.flip),
            "skipped_paths": self.skipped_paths,
            "skipped_splits": self.skipped_splits,
        }
        return write_atomically(
            path, lambda handle: np.savez(handle, **arrays), overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingSet:
        """Read a file written by :meth:`save` (also by a version that could not skip
        images: without ``skipped_paths`` / ``skipped_splits``, none was skipped).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an ``.npz`` file, or one lacking some of the arrays.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as stored:
                missing = [
                    key
                    for key in EMBEDDING_FILE_KEYS
                    if key not in stored.files and key not in _OPTIONAL_EMBEDDING_KEYS
                ]
                if missing:
                    raise ValueError(f"it lacks the arrays {missing}")
                values = {key: stored[key] for key in EMBEDDING_FILE_KEYS if key in stored.files}
        except (OSError, ValueError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not an embeddings file: {error}") from error
        return cls(
            embeddings=values["embeddings"],
            pids=values["pids"],
            camids=values["camids"],
            paths=values["paths"],
            splits=values["splits"],
            model=str(values["model"]),
            flip=bool(values["flip"]),
            skipped_paths=values.get("skipped_paths", ()),
            skipped_splits=values.get("skipped_splits", ()),
        )


def _original_pids(dataset: Dataset) -> list[int]:
    """The ``pid`` column with training labels mapped back to the dataset's identities.

    ``load_reid_dataset`` relabels train identities to 0..C-1 and keeps the original ids as
    the ``ClassLabel`` names; in a file that mixes splits the labels would collide with the
    query / gallery ids. Names that are not integers are left as labels.
    """
    if "pid" not in dataset.column_names:
        return [-1] * len(dataset)
    pids = list(dataset["pid"])
    feature = dataset.features["pid"]
    if isinstance(feature, ClassLabel):
        try:
            names = [int(name) for name in feature.names]
        except ValueError:
            return pids
        return [names[label] for label in pids]
    return pids


def extract_checkpoint_embeddings(
    model: str | os.PathLike[str],
    splits: Mapping[str, Dataset],
    *,
    flip: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> EmbeddingSet:
    """Embed every image of one or more datasets with a checkpoint, in order.

    Args:
        model: checkpoint folder or Hub id (see :func:`load_checkpoint`).
        splits: name -> dataset with an ``image`` column (optional ``pid``, ``camid`` and
            ``path`` columns; missing ones are stored as unknown). Rows follow the mapping's
            order, then each dataset's.
        flip, batch_size, num_workers, progress: see
            :func:`~reid_transformers.retrieval.extraction.extract_embeddings`.
        device: where the model runs; default ``cuda`` if available, else ``cpu``.
        skip_unreadable: leave out the images that cannot be read (missing, truncated,
            refused by the processor) instead of stopping at the first: each is logged and
            listed in the result's ``skipped_paths`` / ``skipped_splits``, and has no row.

    Raises:
        ValueError: no datasets, an empty one, one without an ``image`` column, or an
            image that cannot be read (without ``skip_unreadable``).
        FileNotFoundError / NotADirectoryError: see :func:`load_checkpoint`.
    """
    if not splits:
        raise ValueError("no datasets to embed")
    for name, dataset in splits.items():
        if "image" not in dataset.column_names:
            raise ValueError(f"dataset {name!r} has no 'image' column")
        if len(dataset) == 0:
            raise ValueError(f"dataset {name!r} has no images")
    loaded, processor = load_checkpoint(model, device=device)
    parts: list[np.ndarray] = []
    pids: list[int] = []
    camids: list[int] = []
    paths: list[str] = []
    names: list[str] = []
    readable_parts: list[np.ndarray] = []
    skipped_paths: list[str] = []
    skipped_splits: list[str] = []
    options = dict(batch_size=batch_size, flip=flip, num_workers=num_workers,
                   progress=progress, skip_unreadable=skip_unreadable)
    for name, dataset in splits.items():
        embeddings, readable = _embed_readable(loaded, dataset, processor, **options)
        unread = np.flatnonzero(~readable)
        if unread.size:
            skipped_paths += _image_names(dataset, unread)
            skipped_splits += [name] * unread.size
        parts.append(embeddings)
        readable_parts.append(readable)
        rows = len(dataset)
        columns = dataset.column_names
        pids += _original_pids(dataset)
        camids += list(dataset["camid"]) if "camid" in columns else [-1] * rows
        paths += [p or "" for p in dataset["path"]] if "path" in columns else [""] * rows
        names += [name] * rows
    keep = np.concatenate(readable_parts)
    return EmbeddingSet(
        embeddings=np.concatenate(parts)[keep],
        pids=np.asarray(pids, dtype=np.int64)[keep],
        camids=np.asarray(camids, dtype=np.int64)[keep],
        paths=np.asarray(paths, dtype=np.str_)[keep],
        splits=np.asarray(names, dtype=np.str_)[keep],
        model=str(model),
        flip=flip,
        skipped_paths=skipped_paths,
        skipped_splits=skipped_splits,
    )


# ---------------------------------------------------------------------- model cards
@dataclass(frozen=True)
class ModelCardUpdate:
    """What :func:`write_model_card` rendered (and wrote, unless asked not to).

    Attributes:
        path: the card, ``<checkpoint>/README.md``.
        model_name: the card's title and model-index name.
        dataset: the name (or Hub id) the card gives the data, or ``None`` when it names
            none (see ``data_layout``).
        has_metrics: whether the card carries a metrics table and model-index.
        kept: what was taken over from the saved card inputs (``card_inputs.json``) or,
            without them, from the previous card's metadata: ``"metrics"`` (with their
            evaluation settings), ``"dataset"``, ``"model name"``, ``"base model"``,
            ``"initialisation"``, ``"training recipe"``, ``"checkpoint origin"``.
        replaced: whether a previous ``README.md`` was (or, unwritten, would be) replaced.
        card: the rendered card; ``str(card)`` is the README text.
        inputs: what the card was rendered from, as saved to ``card_inputs.json``.
        written: whether ``README.md`` and ``card_inputs.json`` were written.
        inputs_found: whether a ``card_inputs.json`` was read; without one, tables the previous
            card only held as text (recipe, evaluation settings) could not be recovered.
        data_layout: the ``load_reid_dataset`` layout the data was read with, if known.
    """

    path: Path
    model_name: str
    dataset: str | None
    has_metrics: bool
    kept: tuple[str, ...] = field(default_factory=tuple)
    replaced: bool = False
    card: ModelCard | None = None
    inputs: CardInputs | None = None
    written: bool = True
    inputs_found: bool = False
    data_layout: str | None = None


# The model-index dataset type of data known only by its layout: "custom-<layout>-layout".
_CUSTOM_DATA_TYPE = re.compile(r"^custom-(?P<layout>\w+)-layout$")


def _read_previous_card(path: Path) -> CardInputs:
    """What a card's YAML metadata records (the rendered text is not parsed): model name,
    base model, and the metrics of its first dataset with that dataset.

    For cards without a ``card_inputs.json`` beside them. Metric values are stored in percent
    with two decimals (see ``render_model_card``); they come back as fractions. Metadata that
    cannot be read, or metrics the card would refuse, yield nothing.
    """
    try:
        data = ModelCard(path.read_text(encoding="utf-8")).data
    except (ValueError, UnicodeDecodeError):
        return CardInputs()
    model_name = data.model_name if isinstance(data.model_name, str) and data.model_name.strip() \
        else None
    base_model = data.base_model if isinstance(data.base_model, str) and data.base_model.strip() \
        else None
    first: tuple[Any, Any] | None = None
    found: dict[str, dict[str, float]] = {}
    for result in data.eval_results or ():
        if first is None:
            first = (result.dataset_type, result.dataset_name)
        if (result.dataset_type, result.dataset_name) != first \
                or not isinstance(result.metric_value, (int, float)):
            continue
        reranked = (result.metric_name or "").endswith(_RERANKED_SUFFIX)
        found.setdefault("reranked_metrics" if reranked else "metrics", {})[
            result.metric_type] = round(result.metric_value / 100.0, 6)
    described: dict[str, str | None] = {}
    if first is not None:
        dataset_type, dataset_name = first
        custom = _CUSTOM_DATA_TYPE.match(dataset_type or "")
        if custom and custom["layout"] in KNOWN_DATASETS:
            described = {"data_layout": custom["layout"]}
        elif dataset_type in KNOWN_DATASETS:  # a benchmark is stored under its loader name
            described = {"dataset_name": dataset_type}
        elif dataset_name:
            described = {"dataset_name": dataset_name}
    try:
        return CardInputs(model_name=model_name, base_model=base_model, **described, **found)
    except ValueError:
        return CardInputs(model_name=model_name, base_model=base_model)


def _default_model_name(folder: Path, config: Any, dataset: str | None) -> str:
    resolved = folder.resolve()
    if resolved.name in _TRAINER_CHECKPOINT_NAMES and resolved.parent.name:
        return resolved.parent.name
    return resolved.name or f"{config.model_type}-{dataset or 'reid'}"


def _same_key(name: str) -> str:
    return name.strip().lower()


def _names_other_data(name: str, saved: CardInputs) -> bool:
    """Whether naming the data ``name`` contradicts what ``saved`` knows of it.

    A different name, or a benchmark whose own layout differs from the layout the data was
    read in (the generic CSV layout can hold anything), is other data; naming data that had
    no name (only a layout, or nothing) is not.
    """
    if saved.dataset_name is not None:
        return _same_key(name) != _same_key(saved.dataset_name)
    key = _same_key(name)
    return saved.data_layout not in (None, "generic") and key in KNOWN_DATASETS \
        and key != saved.data_layout


def _layout_contradicts(layout: str, saved: CardInputs) -> bool:
    """Whether data read in ``layout`` cannot be the data ``saved`` describes: it was read in
    another layout, or its saved name is a benchmark of another layout."""
    if saved.data_layout is not None:
        return layout != saved.data_layout
    return saved.dataset_name is not None and _same_key(saved.dataset_name) in KNOWN_DATASETS \
        and layout != "generic" and _same_key(saved.dataset_name) != layout


def write_model_card(
    checkpoint: str | os.PathLike[str],
    *,
    evaluation: CheckpointEvaluation | None = None,
    dataset: str | None = None,
    dataset_id: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
    save: bool = True,
) -> ModelCardUpdate:
    """Render the checkpoint's model card into its ``README.md``, keeping every saved fact.

    The card is rendered from the checkpoint's config and its card inputs
    (:class:`~reid_transformers.hub.CardInputs`): those saved in ``card_inputs.json`` (the
    trainer writes it with every checkpoint), else what the previous card's YAML metadata
    records (metrics with their dataset, model name, base model), updated with what is given
    here. ``README.md`` and the updated ``card_inputs.json`` are then written atomically, so a
    later re-render keeps the recipe, data, origin and metrics. ``repo_id`` is not saved: it is
    where one copy is published, given again when the card is rendered for it.

    The data is named only by ``dataset`` / ``dataset_id`` (or a name saved before): the
    ``dataset`` of an ``evaluation`` is the ``load_reid_dataset`` layout it was read with
    (``evaluate --dataset``), and data known only by its layout is described as a custom
    dataset in that layout, never as the benchmark.

    Args:
        checkpoint: the checkpoint folder (``config.json`` is read for the architecture).
        evaluation: metrics to put in the card (e.g. :meth:`CheckpointEvaluation.load` of the
            ``--json`` file of ``reid-transformers evaluate``), with its distance and flip
            settings and the count of images it left out as unreadable. Replaces the saved
            metrics; measured in another layout than the saved data, it also drops the saved
            data's name.
        dataset: the data's name: a benchmark (``"market1501"``, shown by its usual name) or
            any display name. Naming other data than the saved name (or a benchmark of
            another layout) drops the saved metrics, which were measured on that data.
        dataset_id: the data's Hub dataset id (metadata ``datasets``; names the data too).
        repo_id: ``namespace/name`` the card is published under, used in its loading
            snippets (they otherwise load ``"path/to/checkpoint"``).
        model_name: title and model-index name; default: ``repo_id``'s name, else the saved
            one, else the checkpoint folder's name (the run folder's for a trainer's
            ``best`` / ``last``).
        base_model: the weights training started from; default: the saved one (with how the
            checkpoint was initialised from it).
        save: with False nothing is written; the card is in the result (``push
            --update-card`` writes it only after the upload succeeded).

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing.
        NotADirectoryError: ``checkpoint`` is a file.
        ValueError: metrics without a dataset name, metrics the card refuses (unknown keys,
            values outside [0, 1]), a malformed ``repo_id`` or ``dataset_id``, or a damaged
            ``card_inputs.json`` (the message names it).
    """
    folder = Path(checkpoint)
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint {folder} is a file; expected a checkpoint folder")
    if not (folder / _CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"checkpoint folder {folder} lacks {_CONFIG_NAME}; write it with "
            f"model.save_pretrained(folder)"
        )
    config = AutoConfig.from_pretrained(folder)
    card_path = folder / _CARD_NAME
    replaced = card_path.is_file()
    found = CardInputs.load(folder)
    saved = found or (_read_previous_card(card_path) if replaced else CardInputs())
    kept: list[str] = []

    name, hub_id, layout = saved.dataset_name, saved.dataset_id, saved.data_layout
    metrics, reranked, facts = saved.metrics, saved.reranked_metrics, saved.evaluation
    if evaluation is not None:
        metrics, reranked = evaluation.metrics, evaluation.reranked_metrics
        facts = {key: value
                 for key, value in (("distance", evaluation.distance), ("flip", evaluation.flip))
                 if value is not None}
        if evaluation.skipped_images:  # the metrics are not those of the whole split
            facts["images_left_out"] = {split: len(files)
                                        for split, files in evaluation.skipped_images.items()}
        facts = facts or None
        measured_on = evaluation.dataset
        if measured_on in KNOWN_DATASETS:
            if _layout_contradicts(measured_on, saved):
                name = hub_id = None  # measured on other data than the saved name's
            layout = measured_on
        elif measured_on is not None:  # a name written into a metrics file by hand
            name, hub_id, layout = measured_on, None, None
    if dataset is not None and evaluation is None and _names_other_data(dataset, saved):
        metrics = reranked = facts = None  # measured on the data named before
    if dataset is not None:
        name = dataset
        hub_id = dataset_id
    if dataset_id is not None:
        hub_id = dataset_id
    if evaluation is None and (metrics is not None or reranked is not None):
        kept.append("metrics")
    data = (name, hub_id, layout)
    if dataset is None and dataset_id is None and any(data) \
            and data == (saved.dataset_name, saved.dataset_id, saved.data_layout):
        kept.append("dataset")
    if (metrics is not None or reranked is not None) and not (name or hub_id or layout):
        raise ValueError(
            "the metrics need the name of the dataset they were measured on; pass dataset"
        )

    if model_name is None and repo_id is not None:
        model_name = repo_id.rsplit("/", 1)[-1]
    if model_name is None and saved.model_name:
        model_name = saved.model_name
        kept.append("model name")
    if model_name is None:
        model_name = _default_model_name(folder, config, name or hub_id or layout)
    initialisation = saved.initialisation
    if base_model is None:
        base_model = saved.base_model
        if base_model is not None:
            kept.append("base model")
        if initialisation is not None:
            kept.append("initialisation")
    elif base_model != saved.base_model:
        initialisation = None  # what these weights are is not known
    if saved.training is not None:
        kept.append("training recipe")
    if saved.checkpoint is not None:
        kept.append("checkpoint origin")

    inputs = CardInputs(
        model_name=model_name, dataset_name=name, dataset_id=hub_id, data_layout=layout,
        metrics=metrics, reranked_metrics=reranked, evaluation=facts, training=saved.training,
        base_model=base_model, initialisation=initialisation, checkpoint=saved.checkpoint,
    )
    card = save_card(folder, config, inputs, repo_id=repo_id) if save \
        else inputs.render(config, repo_id=repo_id)
    return ModelCardUpdate(
        path=card_path,
        model_name=model_name,
        dataset=name or hub_id or (layout if layout == "synthetic" else None),
        has_metrics=metrics is not None or reranked is not None,
        kept=tuple(kept),
        replaced=replaced,
        card=card,
        inputs=inputs,
        written=save,
        inputs_found=found is not None,
        data_layout=layout,
    )
