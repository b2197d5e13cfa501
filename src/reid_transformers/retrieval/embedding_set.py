"""Embeddings of whole datasets with a checkpoint, and the ``.npz`` file that holds them.

:func:`extract_checkpoint_embeddings` loads a checkpoint and embeds every image of one or
more datasets in order, as an :class:`EmbeddingSet` (embeddings with identities, cameras,
files and splits) that saves to and loads from an ``.npz`` file without pickles.
:func:`embed_readable` and :func:`image_names` are the steps it shares with
``evaluate_checkpoint``: embedding a dataset whose unreadable images are left out, and
naming those images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from transformers import PreTrainedModel

from ..models.auto import load_checkpoint
from ..utils import write_atomically
from .extraction import ImageProcessor, extract_embeddings

__all__ = [
    "EMBEDDING_FILE_KEYS",
    "EmbeddingSet",
    "embed_readable",
    "extract_checkpoint_embeddings",
    "image_names",
]


def embed_readable(
    model: PreTrainedModel, dataset: Dataset, processor: ImageProcessor, **options: object
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~reid_transformers.retrieval.extraction.extract_embeddings` of ``dataset``
    (``options`` are its keyword arguments) and which rows were readable.

    Returns:
        ``(N, D)`` float32 embeddings, one row per image, and an ``(N,)`` bool mask of the
        images that could be read. With ``skip_unreadable=True`` the rows of the others are
        NaN (extraction leaves NaN for them, and only for them); without it an unreadable
        image raises, so the mask is all True.
    """
    embeddings = extract_embeddings(model, dataset, processor, **options)
    return embeddings, ~np.isnan(embeddings).any(axis=1)


def image_names(dataset: Dataset, rows: np.ndarray) -> list[str]:
    """How results name the images at ``rows`` (``(S,)`` indices into ``dataset``): the
    ``path`` column's entry, else ``"row <i>"``."""
    paths = None
    if "path" in dataset.column_names:
        paths = list(dataset.select(rows.tolist())["path"])
    return [
        paths[i] if paths is not None and paths[i] else f"row {row}"
        for i, row in enumerate(rows.tolist())
    ]


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
        model: checkpoint folder or Hub id (see
            :func:`~reid_transformers.models.auto.load_checkpoint`).
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
        FileNotFoundError / NotADirectoryError: see
            :func:`~reid_transformers.models.auto.load_checkpoint`.
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
        embeddings, readable = embed_readable(loaded, dataset, processor, **options)
        unread = np.flatnonzero(~readable)
        if unread.size:
            skipped_paths += image_names(dataset, unread)
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
