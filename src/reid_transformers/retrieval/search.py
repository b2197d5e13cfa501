"""Search a gallery of person crops for a query image (what ``reid-transformers search`` runs).

* :func:`load_gallery` turns a folder of images (identity and camera read from Market-1501-style
  file names where they fit, see :func:`market_style_ids`) or a dataset written with
  ``save_to_disk`` into a ``datasets.Dataset`` with ``image``, ``pid``, ``camid`` and ``path``
  columns.
* :func:`prepare_gallery_index` embeds that gallery into an exact cosine
  :class:`~reid_transformers.retrieval.index.GalleryIndex`, or reuses one saved by an earlier
  call after checking that it still fits the gallery and the model.
* :func:`search_gallery` embeds one query image, returns its top-k gallery matches as rows and
  optionally writes the ranked list as a PNG.

The model is anything :func:`~reid_transformers.retrieval.extraction.extract_embeddings` takes
(a re-ID model returning ``embeddings``), the processor its image processor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk

from ..data.datasets import IMAGE_SUFFIXES, MARKET_NAME_PATTERN, find_image_files
from .extraction import ImageProcessor, extract_embeddings
from .index import GalleryIndex
from .visualization import save_ranked_list

__all__ = [
    "PROBE_MIN_SIMILARITY",
    "GallerySearch",
    "PreparedIndex",
    "RankedMatch",
    "image_folder_dataset",
    "load_gallery",
    "market_style_ids",
    "prepare_gallery_index",
    "search_gallery",
]

#: A reused index must return the first gallery image's fresh embedding with at least this
#: cosine similarity; recomputing on another device or thread count moves it by ~1e-6, while
#: another checkpoint or flip setting moves it far more.
PROBE_MIN_SIMILARITY = 0.999
# Files that mark a folder as written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


def market_style_ids(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Identity and camera from a Market-1501-style file name ``<pid>_c<camera>...``.

    ``0002_c1s1_000451_03.jpg`` gives ``(2, 0)``: the camera is returned 0-based, as
    :func:`~reid_transformers.data.load_reid_dataset` stores it. DukeMTMC-reID, MSMT17 and the
    synthetic dataset name files the same way.

    Returns:
        ``(pid, camid)``, or ``(-1, -1)`` (unknown) when the name does not fit, including a
        camera number below 1.
    """
    match = MARKET_NAME_PATTERN.match(Path(path).name)
    if match is None or int(match.group(2)) < 1:
        return -1, -1
    return int(match.group(1)), int(match.group(2)) - 1


def image_folder_dataset(folder: str | os.PathLike[str]) -> Dataset:
    """Every image under ``folder`` as a dataset, with identities parsed from the file names.

    Images are found as `reid_transformers.data.datasets.find_image_files` finds them
    (recursively, suffixes :data:`IMAGE_SUFFIXES` in any case, hidden files and folders and
    links to folders skipped, a warning counting what was ignored), sorted by absolute path,
    so the row order is stable across runs.

    Returns:
        A ``Dataset`` with columns ``image`` (lazily decoded ``datasets.Image``), ``pid`` and
        ``camid`` (int64, from :func:`market_style_ids`; -1 = unknown) and ``path`` (absolute).

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
        FileNotFoundError: no image file under ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; expected a folder of images")
    # The one rule for folders of images (benchmark splits use it too); resolved paths, as
    # saved gallery indexes store them.
    paths = sorted(
        str(Path(path).resolve()) for path in find_image_files(folder, label=str(folder))
    )
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    ids = [market_style_ids(path) for path in paths]
    features = Features(
        {"image": Image(), "pid": Value("int64"), "camid": Value("int64"), "path": Value("string")}
    )
    return Dataset.from_dict(
        {
            "image": paths,
            "pid": [pid for pid, _ in ids],
            "camid": [camid for _, camid in ids],
            "path": paths,
        },
        features=features,
    )


def load_gallery(source: str | os.PathLike[str]) -> Dataset:
    """A gallery from a folder of images or from a dataset saved with ``save_to_disk``.

    Args:
        source: a folder of images (see :func:`image_folder_dataset`), or a folder written by
            ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (whose ``gallery`` split
            is used). A saved dataset needs an ``image`` column; ``pid`` / ``camid`` / ``path``
            columns are optional and filled with -1 / -1 / ``None`` (unknown) when absent.

    Returns:
        A ``Dataset`` with at least the columns ``image``, ``pid``, ``camid`` and ``path``.
        No image is opened here: an unreadable one shows up when the gallery is embedded,
        where ``extract_embeddings(..., skip_unreadable=True)`` can leave it out.

    Raises:
        FileNotFoundError: ``source`` does not exist, or holds no image files.
        NotADirectoryError: ``source`` is a file.
        ValueError: a saved ``DatasetDict`` without a ``gallery`` split, or a saved dataset
            without an ``image`` column.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"gallery {source} does not exist")
    if not source.is_dir():
        raise NotADirectoryError(
            f"gallery {source} is a file; expected a folder of images or a dataset folder "
            f"written with save_to_disk"
        )
    if not any((source / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
        return image_folder_dataset(source)
    loaded = load_from_disk(str(source))
    if isinstance(loaded, DatasetDict):
        if "gallery" not in loaded:
            raise ValueError(
                f"the DatasetDict at {source} has no 'gallery' split (splits: {list(loaded)})"
            )
        loaded = loaded["gallery"]
    if "image" not in loaded.column_names:
        raise ValueError(
            f"the dataset at {source} has no 'image' column (columns: {loaded.column_names})"
        )
    rows = len(loaded)
    for column, missing in (("pid", -1), ("camid", -1), ("path", None)):
        if column not in loaded.column_names:
            loaded = loaded.add_column(column, [missing] * rows)
    return loaded


def _indexed_paths(gallery: Dataset) -> list[str | None]:
    """The gallery paths as the index stores them: all ``None`` unless every row has one."""
    paths = list(gallery["path"])
    return paths if all(path is not None for path in paths) else [None] * len(paths)


@dataclass(frozen=True)
class PreparedIndex:
    """What :func:`prepare_gallery_index` returns.

    Attributes:
        index: the gallery index (exact, cosine), one row per gallery image in gallery order.
        status: ``"built"`` (no saved index was given or found), ``"reused"`` (the saved index
            fitted) or ``"rebuilt"`` (a saved index did not fit and was replaced).
        directory: where the index is saved, or ``None`` when it is kept in memory only.
        reason: for ``"rebuilt"``, why the saved index did not fit; otherwise ``None``.
    """

    index: GalleryIndex
    status: Literal["built", "reused", "rebuilt"]
    directory: Path | None = None
    reason: str | None = None

    def describe(self) -> str:
        """What happened, for a log or a terminal: one line, two for a rebuilt index."""
        size = f"{len(self.index)} images"
        if self.status == "reused":
            return f"Reusing the gallery index at {self.directory} ({size})"
        if self.directory is None:
            return f"Built the gallery index in memory ({size})"
        saved = f"Saved the gallery index to {self.directory} ({size})"
        if self.status == "rebuilt":
            return f"Rebuilding the gallery index at {self.directory}: {self.reason}\n{saved}"
        return saved


def _stale_reason(index: GalleryIndex, gallery: Dataset, probe: np.ndarray) -> str | None:
    """Why a saved index does not fit this gallery and model (``None`` if it does)."""
    if index.metric != "cosine":
        return f"it uses the {index.metric} metric, gallery search uses cosine"
    if len(index) != len(gallery):
        return f"it holds {len(index)} images, the gallery has {len(gallery)}"
    if index.paths != _indexed_paths(gallery):
        return "its image paths differ from the gallery's"
    if index.dim != probe.shape[1]:
        return f"its embeddings have {index.dim} dimensions, the model's have {probe.shape[1]}"
    similarity = float(index.search(probe, k=1).scores[0, 0])
    if similarity < PROBE_MIN_SIMILARITY:
        return (
            f"the first gallery image embeds differently now (best stored match: cosine "
            f"{similarity:.4f}); was it built with another model or flip setting?"
        )
    return None


def prepare_gallery_index(
    model: torch.nn.Module,
    processor: ImageProcessor,
    gallery: Dataset,
    *,
    index_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    flip: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> PreparedIndex:
    """Embed ``gallery`` into an exact cosine index, or reuse the one saved in ``index_dir``.

    A saved index is reused only if it still fits: cosine metric, the same image paths in the
    same order, the model's embedding size, and the first gallery image, embedded afresh with
    ``model`` and ``flip``, found in the index with cosine >= :data:`PROBE_MIN_SIMILARITY`.
    That probe costs one forward pass and catches an index built with another checkpoint or
    flip setting. A saved
    index that fails a check, or cannot be loaded (corrupt or partial files), is rebuilt and
    saved over; the save is atomic (see :meth:`GalleryIndex.save`).

    Args:
        model, processor: the re-ID model and its image processor.
        gallery: a dataset as :func:`load_gallery` returns it.
        index_dir: where to save the index and look for a saved one; ``None`` keeps it in
            memory only.
        batch_size, flip, num_workers, progress: passed to
            :func:`~reid_transformers.retrieval.extraction.extract_embeddings`.

    Returns:
        A :class:`PreparedIndex`; its ``describe()`` says whether the index was reused.

    Raises:
        ValueError: an empty gallery.
        NotADirectoryError: ``index_dir`` is a file.
        FileExistsError: ``index_dir`` holds files that are not a saved index (they are never
            replaced).
    """
    if len(gallery) == 0:
        raise ValueError("the gallery has no images: there is nothing to index")
    embed = {"batch_size": batch_size, "flip": flip, "num_workers": num_workers}
    directory = Path(index_dir) if index_dir is not None else None
    reason = None
    if directory is not None and directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(f"index folder {directory} is a file; expected a folder")
        if any(directory.iterdir()):
            # Checked before embedding a possibly large gallery: `GalleryIndex.save` would
            # refuse to replace the folder only after all that work. Every saved index has
            # this file.
            if not (directory / "config.json").is_file():
                raise FileExistsError(
                    f"index folder {directory} is not empty and holds no saved gallery index "
                    f"(no config.json); choose a new or empty folder"
                )
            try:
                saved = GalleryIndex.load(directory)
            except (FileNotFoundError, ValueError) as error:
                reason = f"it cannot be loaded ({error})"
            else:
                probe = extract_embeddings(
                    model, gallery.select([0]), processor, progress=False, **embed
                )
                reason = _stale_reason(saved, gallery, probe)
                if reason is None:
                    return PreparedIndex(saved, "reused", directory)
    embeddings = extract_embeddings(model, gallery, processor, progress=progress, **embed)
    index = GalleryIndex(embeddings.shape[1], metric="cosine")
    paths = _indexed_paths(gallery)
    index.add(
        embeddings,
        pids=gallery["pid"],
        camids=gallery["camid"],
        paths=None if paths[0] is None else paths,
    )
    if directory is not None:
        index.save(directory)
    return PreparedIndex(index, "built" if reason is None else "rebuilt", directory, reason)


@dataclass(frozen=True)
class RankedMatch:
    """One gallery image in a query's ranked list.

    Attributes:
        rank: 1 for the best match.
        row: the gallery row (dataset and index row number).
        score: cosine similarity to the query, in [-1, 1]; higher is more alike.
        pid, camid: the gallery image's identity and 0-based camera, -1 where unknown.
        path: the gallery image's file, ``None`` where unknown.
    """

    rank: int
    row: int
    score: float
    pid: int
    camid: int
    path: str | None


@dataclass(frozen=True)
class GallerySearch:
    """What :func:`search_gallery` returns: a query and its ranked gallery matches.

    Attributes:
        query_path: the query image's absolute path.
        query_pid, query_camid: read from its file name with :func:`market_style_ids`
            (-1 = unknown).
        matches: the top-k, best first.
        picture: the PNG written, or ``None`` when none was asked for.
    """

    query_path: str
    query_pid: int
    query_camid: int
    matches: tuple[RankedMatch, ...]
    picture: Path | None = None

    def format_table(self) -> str:
        """The query line, then one ``rank score pid camid path`` row per match."""
        lines = [
            f"Query {self.query_path} (pid {self.query_pid}, camid {self.query_camid})",
            f"{'rank':>4}  {'score':>7}  {'pid':>5}  {'camid':>5}  path",
        ]
        lines += [
            f"{m.rank:4d}  {m.score:7.4f}  {m.pid:5d}  {m.camid:5d}  {m.path}" for m in self.matches
        ]
        return "\n".join(lines)


def _id_label(pid: int, camid: int) -> str | None:
    """Caption text like ``"pid 12 c3"`` (camera 1-based, as in the file names)."""
    parts = ([f"pid {pid}"] if pid != -1 else []) + ([f"c{camid + 1}"] if camid != -1 else [])
    return " ".join(parts) or None


def search_gallery(
    model: torch.nn.Module,
    processor: ImageProcessor,
    index: GalleryIndex,
    gallery: Dataset,
    query: str | os.PathLike[str],
    *,
    k: int = 10,
    flip: bool = False,
    output: str | os.PathLike[str] | None = None,
) -> GallerySearch:
    """The top-``k`` gallery images for one query image, optionally drawn as a PNG.

    The query is embedded like the gallery was (pass the same ``flip``) and searched in
    ``index``; ``k`` larger than the gallery is clipped to its size. With ``output``, the
    picture of :func:`~reid_transformers.retrieval.visualization.save_ranked_list` is written
    there atomically: the query framed blue, then the matches framed green (same identity) or
    red (another) where both identities are known, grey otherwise, captioned with their rank,
    score and ``pid P cC`` (camera 1-based, as in the file names).

    Args:
        model, processor: the re-ID model and its image processor.
        index: the gallery's index, rows in ``gallery`` order (see
            :func:`prepare_gallery_index`).
        gallery: the dataset the index was built from (its images are drawn in the PNG).
        query: the query image file; its identity is read from its name when it fits.
        k: how many matches to return (>= 1).
        flip: average the query embedding with its mirror's.
        output: the PNG file to write (name ending in ``.png``); ``None`` writes nothing.

    Raises:
        FileNotFoundError: ``query`` is not a file.
        ValueError: ``k`` < 1, ``output`` not ending in ``.png``, or an index whose size
            differs from the gallery's.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if output is not None and Path(output).suffix.lower() != ".png":
        raise ValueError(f"output must end in .png, got {str(output)!r}")
    if len(index) != len(gallery):
        raise ValueError(
            f"the index holds {len(index)} images but the gallery has {len(gallery)}; build "
            f"the index from this gallery (prepare_gallery_index)"
        )
    query_file = Path(query)
    if not query_file.is_file():
        raise FileNotFoundError(f"query image {query_file} is not a file")
    query_path = str(query_file.resolve())
    query_data = Dataset.from_dict(
        {"image": [query_path], "path": [query_path]},
        features=Features({"image": Image(), "path": Value("string")}),
    )
    embedding = extract_embeddings(model, query_data, processor, flip=flip, progress=False)
    found = index.search(embedding, k=k)
    query_pid, query_camid = market_style_ids(query_path)
    matches = tuple(
        RankedMatch(
            rank=column + 1,
            row=int(found.indices[0, column]),
            score=float(found.scores[0, column]),
            pid=int(found.pids[0, column]),
            camid=int(found.camids[0, column]),
            path=found.paths[0][column],
        )
        for column in range(found.indices.shape[1])
    )
    picture = None
    if output is not None:
        picture = save_ranked_list(
            query_path,
            [gallery[match.row]["image"] for match in matches],
            output,
            matches=[
                None if query_pid == -1 or match.pid == -1 else match.pid == query_pid
                for match in matches
            ],
            scores=[match.score for match in matches],
            labels=[_id_label(match.pid, match.camid) for match in matches],
            query_label=_id_label(query_pid, query_camid),
        )
    return GallerySearch(query_path, query_pid, query_camid, matches, picture)
