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
  what the previous card's metadata recorded (metrics, dataset, base model) unless replaced.

This module sits above ``evaluation``, ``retrieval``, ``models`` and ``hub``; none of them
imports it.
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
from datasets import ClassLabel, Dataset
from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedModel

from . import models as _models  # noqa: F401  (registers the architectures with the Auto classes)
from .evaluation import DISTANCE_METRICS, ReIDMetric
from .hub import KNOWN_DATASETS, render_model_card, save_model_card
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
_EVALUATION_KEYS = ("model", "dataset", "distance", "flip", "metrics", "reranked_metrics")


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

    Raises:
        FileNotFoundError: the folder does not exist (and is not a Hub id), or lacks files
            (all missing ones are named).
        NotADirectoryError: ``model`` is a file.
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
    """
    target = _device(device)
    source = checkpoint_source(model)
    local = Path(source).is_dir()
    try:
        loaded = AutoModel.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
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
    """

    metrics: dict[str, Any]
    reranked_metrics: dict[str, Any] | None = None
    model: str | None = None
    dataset: str | None = None
    distance: str | None = None
    flip: bool | None = None

    def format_table(self) -> str:
        """The headline metrics in percent, one row per ranking, then the query counts."""
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
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``model``, ``dataset``, ``distance``, ``flip``, ``metrics`` and
        ``reranked_metrics``."""
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
        reranked = values.get("reranked_metrics")
        return cls(
            metrics=dict(values["metrics"]),
            reranked_metrics=dict(reranked) if reranked is not None else None,
            model=values.get("model"),
            dataset=values.get("dataset"),
            distance=values.get("distance"),
            flip=values.get("flip"),
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

    Raises:
        ValueError: an unknown ``distance``, or ``data`` lacking a split or column.
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
    embeddings = {
        split: extract_embeddings(
            loaded,
            data[split],
            processor,
            batch_size=batch_size,
            flip=flip,
            num_workers=num_workers,
            progress=progress,
        )
        for split in ("query", "gallery")
    }
    inputs = {
        "query_embeddings": embeddings["query"],
        "query_pids": data["query"]["pid"],
        "query_camids": data["query"]["camid"],
        "gallery_embeddings": embeddings["gallery"],
        "gallery_pids": data["gallery"]["pid"],
        "gallery_camids": data["gallery"]["camid"],
    }
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
    )


# ---------------------------------------------------------------------- embeddings files
#: Arrays of an embeddings file written by :meth:`EmbeddingSet.save`.
EMBEDDING_FILE_KEYS = ("embeddings", "pids", "camids", "paths", "splits", "model", "flip")


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
        for name, array in arrays.items():
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
        }
        return write_atomically(
            path, lambda handle: np.savez(handle, **arrays), overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingSet:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an ``.npz`` file, or one lacking some of the arrays.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as stored:
                missing = [key for key in EMBEDDING_FILE_KEYS if key not in stored.files]
                if missing:
                    raise ValueError(f"it lacks the arrays {missing}")
                values = {key: stored[key] for key in EMBEDDING_FILE_KEYS}
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

    Raises:
        ValueError: no datasets, an empty one, or one without an ``image`` column.
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
    for name, dataset in splits.items():
        parts.append(
            extract_embeddings(
                loaded,
                dataset,
                processor,
                batch_size=batch_size,
                flip=flip,
                num_workers=num_workers,
                progress=progress,
            )
        )
        rows = len(dataset)
        columns = dataset.column_names
        pids += _original_pids(dataset)
        camids += list(dataset["camid"]) if "camid" in columns else [-1] * rows
        paths += [p or "" for p in dataset["path"]] if "path" in columns else [""] * rows
        names += [name] * rows
    return EmbeddingSet(
        embeddings=np.concatenate(parts),
        pids=pids,
        camids=camids,
        paths=paths,
        splits=names,
        model=str(model),
        flip=flip,
    )


# ---------------------------------------------------------------------- model cards
@dataclass(frozen=True)
class ModelCardUpdate:
    """What :func:`write_model_card` wrote.

    Attributes:
        path: the card, ``<checkpoint>/README.md``.
        model_name: the card's title and model-index name.
        dataset: the dataset the card names, or ``None``.
        has_metrics: whether the card carries a metrics table and model-index.
        kept: what was taken over from the previous card's metadata (``"metrics"``,
            ``"dataset"``, ``"model name"``, ``"base model"``).
        replaced: whether a previous ``README.md`` was replaced.
    """

    path: Path
    model_name: str
    dataset: str | None
    has_metrics: bool
    kept: tuple[str, ...] = field(default_factory=tuple)
    replaced: bool = False


@dataclass
class _PreviousCard:
    model_name: str | None = None
    base_model: str | None = None
    dataset: str | None = None
    metrics: dict[str, float] | None = None
    reranked_metrics: dict[str, float] | None = None


def _read_previous_card(path: Path) -> _PreviousCard:
    """What a card's YAML metadata records; the rendered text is not parsed.

    Metric values are stored in percent with two decimals (see ``render_model_card``); they
    come back as fractions. A card whose metadata cannot be read yields nothing.
    """
    try:
        data = ModelCard(path.read_text(encoding="utf-8")).data
    except (ValueError, UnicodeDecodeError):
        return _PreviousCard()
    base_model = data.base_model if isinstance(data.base_model, str) else None
    previous = _PreviousCard(model_name=data.model_name, base_model=base_model)
    for result in data.eval_results or ():
        # Known datasets are stored with their load_reid_dataset name as the type.
        dataset = (
            result.dataset_type if result.dataset_type in KNOWN_DATASETS else result.dataset_name
        )
        if previous.dataset is None:
            previous.dataset = dataset
        if dataset != previous.dataset or not isinstance(result.metric_value, (int, float)):
            continue
        reranked = (result.metric_name or "").endswith(_RERANKED_SUFFIX)
        name = "reranked_metrics" if reranked else "metrics"
        if getattr(previous, name) is None:
            setattr(previous, name, {})
        getattr(previous, name)[result.metric_type] = round(result.metric_value / 100.0, 6)
    if previous.metrics is None or "mAP" not in previous.metrics:
        previous.metrics = previous.reranked_metrics = None
    return previous


def _default_model_name(folder: Path, config: Any, dataset: str | None) -> str:
    resolved = folder.resolve()
    if resolved.name in _TRAINER_CHECKPOINT_NAMES and resolved.parent.name:
        return resolved.parent.name
    return resolved.name or f"{config.model_type}-{dataset or 'reid'}"


def write_model_card(
    checkpoint: str | os.PathLike[str],
    *,
    evaluation: CheckpointEvaluation | None = None,
    dataset: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
) -> ModelCardUpdate:
    """Render the checkpoint's model card with ``render_model_card`` into its ``README.md``.

    The card is written atomically (``save_model_card``). What is not given is taken from the
    previous card's YAML metadata, if there is one: its metrics (with and without re-ranking)
    together with their dataset, its model name and its base model. Tables that only the
    previous card's text held (the training recipe, the evaluation settings) cannot be
    recovered and are rendered from ``evaluation`` only.

    Args:
        checkpoint: the checkpoint folder (``config.json`` is read for the architecture).
        evaluation: metrics to put in the card (e.g. :meth:`CheckpointEvaluation.load` of the
            ``--json`` file of ``reid-transformers evaluate``); its distance and flip settings
            are listed in the card. Replaces the previous card's metrics.
        dataset: the dataset's name; default: the evaluation's, else the previous card's.
            Naming another dataset than the previous card's drops the previous metrics (they
            were measured on that one).
        repo_id: ``namespace/name`` the card is published under, used in its loading
            snippets (they otherwise load ``"path/to/checkpoint"``).
        model_name: title and model-index name; default: ``repo_id``'s name, else the
            previous card's, else the checkpoint folder's name (the run folder's for a
            trainer's ``best`` / ``last``).
        base_model: what the trunk was initialised from; default: the previous card's.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing.
        NotADirectoryError: ``checkpoint`` is a file.
        ValueError: metrics without a dataset name, metrics the card refuses (unknown keys,
            values outside [0, 1]), or a malformed ``repo_id``.
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
    previous = _read_previous_card(card_path) if replaced else _PreviousCard()
    kept: list[str] = []

    dataset_name = dataset or (evaluation.dataset if evaluation else None)
    metrics = reranked = None
    if evaluation is not None:
        metrics, reranked = evaluation.metrics, evaluation.reranked_metrics
    elif previous.metrics is not None and dataset_name in (None, previous.dataset):
        metrics, reranked = previous.metrics, previous.reranked_metrics
        kept.append("metrics")
    if dataset_name is None and previous.dataset is not None:
        dataset_name = previous.dataset
        kept.append("dataset")
    if metrics is not None and dataset_name is None:
        raise ValueError(
            "the metrics need the name of the dataset they were measured on; pass dataset"
        )

    if model_name is None and repo_id is not None:
        model_name = repo_id.rsplit("/", 1)[-1]
    if model_name is None and previous.model_name:
        model_name = previous.model_name
        kept.append("model name")
    if model_name is None:
        model_name = _default_model_name(folder, config, dataset_name)
    if base_model is None and previous.base_model:
        base_model = previous.base_model
        kept.append("base model")

    facts = {}
    if evaluation is not None:
        facts = {
            key: value
            for key, value in (("distance", evaluation.distance), ("flip", evaluation.flip))
            if value is not None
        }
    card = render_model_card(
        config,
        model_name=model_name,
        repo_id=repo_id,
        dataset_name=dataset_name,
        metrics=metrics,
        reranked_metrics=reranked,
        evaluation=facts or None,
        base_model=base_model,
    )
    return ModelCardUpdate(
        path=save_model_card(card, folder),
        model_name=model_name,
        dataset=dataset_name,
        has_metrics=metrics is not None,
        kept=tuple(kept),
        replaced=replaced,
    )
