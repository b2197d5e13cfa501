"""FAISS index over gallery embeddings, with identity / camera / path metadata.

`GalleryIndex` wraps a faiss-cpu index (exact flat, IVF-Flat or HNSW-Flat) and keeps, for
every stored vector, the person identity (``pid``), the camera id (``camid``) and the image
path, so a search returns "who, from which camera, which file" rather than bare row
numbers. Rows are numbered 0..N-1 in insertion order; ``SearchResult.indices`` refers to
those numbers.

Exact (flat) search picks a few candidates per query (faiss's float32 search for slightly
more than k rows, or a torch bfloat16 matrix product with ``precision="bfloat16"``) and
re-scores exactly those that could be in the top k (see `GalleryIndex.search`), so both
precisions return the same result.

Threads: faiss parallelises add/search with OpenMP over all visible cores by default.
``faiss.omp_set_num_threads`` is process-global, so this module never calls it; call it
yourself (for example with the number of cores your job owns) before building or searching.
bfloat16 flat search and the re-score run on torch's threads (``torch.set_num_threads``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import faiss
import numpy as np
import torch

from ..evaluation.ranking import reject_zero_vectors
from ..utils import check_int, fsync_directory, replace_directory

__all__ = [
    "FORMAT_VERSION",
    "MIN_POINTS_PER_LIST",
    "GalleryIndex",
    "IndexType",
    "Metric",
    "Precision",
    "RECOMMENDED_APPROXIMATE",
    "SearchResult",
]

Metric: TypeAlias = Literal["cosine", "euclidean", "inner_product"]
IndexType: TypeAlias = Literal["flat", "ivf", "hnsw"]
Precision: TypeAlias = Literal["float32", "bfloat16"]
ArrayLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[Sequence[float]] | Sequence[float]
LabelsLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[int]
PathsLike: TypeAlias = Sequence[str | os.PathLike[str]]

#: Version of the on-disk layout written by `GalleryIndex.save`; bumped on any change that an
#: older `load` could not read correctly.
FORMAT_VERSION = 1

#: Approximate-search settings to start from for a large gallery:
#: ``GalleryIndex(dim, **RECOMMENDED_APPROXIMATE)``. On 103,042 trained 768-d embeddings
#: (benchmarks/bench_index.py --suite trained, docs/search.md) this HNSW searched 10.2x
#: faster than exact flat search at recall@100 0.992 (recall@10 0.998), after a 13 s build
#: on 2 cores [our choice: the fastest setting measured there with recall@100 >= 0.95].
RECOMMENDED_APPROXIMATE: dict[str, Any] = {
    "index_type": "hnsw",
    "hnsw_m": 16,
    "ef_construction": 80,
    "ef_search": 128,
}

_METRICS: tuple[str, ...] = ("cosine", "euclidean", "inner_product")
_INDEX_TYPES: tuple[str, ...] = ("flat", "ivf", "hnsw")
_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")

#: Training vectors needed per IVF list when ``nlist`` is given explicitly. Below about 10
#: points per centroid k-means leaves many lists empty or near-duplicate; above it the
#: partition is usable even if not well converged (a Market-size gallery of 15,913 vectors
#: with nlist=1024, i.e. 15.5 per list, reaches recall@10 0.98-1.0 at nprobe=16 on
#: clustered features in benchmarks/bench_index.py).
MIN_POINTS_PER_LIST = 10
# The automatic nlist stays at or above faiss's own "well-trained k-means" guideline of
# 39 points per centroid.
_AUTO_POINTS_PER_LIST = 39

# Exact reference search for `recall_at_k` reconstructs the gallery in blocks of about this
# many bytes, so it never holds a second full copy of the vectors.
_EXACT_BLOCK_BYTES = 64 * 1024 * 1024
# Queries per chunk when intersecting approximate and exact top-k (a Q x k x k bool array).
_RECALL_QUERY_CHUNK = 4096
# Flat search computes the (queries x gallery) candidate scores in blocks of queries of
# about this many bytes (float32), and gathers the candidates' rows to re-score in blocks
# of about this many (small enough to stay in cache for the product and the sum).
_SCORE_BLOCK_BYTES = 64 * 1024 * 1024
_RESCORE_BLOCK_BYTES = 1024 * 1024
# Unit roundoffs (round to nearest) of float32 and bfloat16, for the candidate error bounds.
_FLOAT32_UNIT = 2.0**-24
_BFLOAT16_UNIT = 2.0**-8
# Candidates kept per query beyond k by the top-k over the candidate scores; a query whose
# error margin reaches past them takes a full pass over its row instead (always correct,
# slower). bfloat16's margin is about 2**-6 of |q||g|, so it needs more room than float32.
_EXTRA_CANDIDATES = {"float32": 4, "bfloat16": 48}

_INDEX_FILE = "index.faiss"
_PIDS_FILE = "pids.npy"
_CAMIDS_FILE = "camids.npy"
_PATHS_FILE = "paths.json"
_CONFIG_FILE = "config.json"
_DATA_FILES = (_INDEX_FILE, _PIDS_FILE, _CAMIDS_FILE, _PATHS_FILE)
_CONFIG_KIND = "reid_transformers.GalleryIndex"


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of a batch of queries, best first along the last axis.

    Exactly one of `scores` and `distances` is set, depending on the index metric:

    - ``cosine``: `scores` are cosine similarities in [-1, 1]; higher is better.
    - ``inner_product``: `scores` are raw dot products; higher is better.
    - ``euclidean``: `distances` are true (not squared) Euclidean distances, in the units
      of the embeddings; lower is better.

    Approximate indexes (IVF with a small ``nprobe``, rarely HNSW) can find fewer than k
    candidates for a query; the missing slots hold index -1, pid/camid -1, path None, and
    score -inf (or distance +inf) so they sort last.

    Attributes:
        metric: The index metric the values were computed with.
        indices: (Q, k) int64 gallery row numbers (insertion order), -1 where missing.
        pids: (Q, k) int64 identities of the neighbours, -1 where unknown or missing.
        camids: (Q, k) int64 camera ids of the neighbours, -1 where unknown or missing.
        paths: Q lists of k image paths, None where unknown or missing.
        scores: (Q, k) float32 similarities for cosine / inner_product, else None.
        distances: (Q, k) float32 Euclidean distances for euclidean, else None.
    """

    metric: Metric
    indices: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[list[str | None]]
    scores: np.ndarray | None = None
    distances: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.distances is None):
            raise ValueError("SearchResult needs exactly one of scores and distances")

    @property
    def values(self) -> np.ndarray:
        """(Q, k) float32 `scores` or `distances`, whichever this metric produces."""
        if self.scores is not None:
            return self.scores
        assert self.distances is not None
        return self.distances

    def __len__(self) -> int:
        """Number of queries Q."""
        return int(self.indices.shape[0])


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    check_int(name, value, minimum=minimum)
    return int(value)


class GalleryIndex:
    """A searchable gallery of embeddings with pid / camid / path metadata.

    Args:
        dim: Embedding dimension D.
        metric: ``"cosine"`` (vectors are L2-normalised on add and search; scores are cosine
            similarities), ``"inner_product"`` (raw dot products) or ``"euclidean"``
            (true Euclidean distances).
        index_type: ``"flat"`` (exact brute force, the default), ``"ivf"`` (IVF-Flat:
            k-means coarse quantiser, searches ``nprobe`` of ``nlist`` lists) or ``"hnsw"``
            (HNSW-Flat graph, ``hnsw_m`` links per node, ``ef_search`` candidates per
            search). IVF and HNSW are approximate; see `recall_at_k`.
        nlist: IVF lists. ``None`` picks ``min(round(4 * sqrt(N)), N // 39)`` (at least 1)
            from the N training vectors. An explicit value needs at least
            ``MIN_POINTS_PER_LIST * nlist`` (10 per list) training vectors, else training
            raises `ValueError`: silently shrinking nlist would leave a badly partitioned
            index for every later add. On re-ID galleries with many small identity clusters,
            recall needs nlist at or above the number of identities. Ignored by other
            index types.
        nprobe: IVF lists visited per query (clipped by faiss to ``nlist``). Can be changed
            later through the `nprobe` property. Ignored by other index types.
        hnsw_m: HNSW graph degree (>= 2). Ignored by other index types.
        ef_construction: HNSW build beam width. 200 (hnswlib's default) rather than faiss's
            40: on clustered re-ID-like features 40 leaves the graph poorly connected
            (recall@10 0.37-0.88 in benchmarks/bench_index.py against 0.69-0.998 with 200)
            for about 2-3x the build time. Ignored by other index types.
        ef_search: HNSW search beam width. Can be changed later through the `ef_search`
            property. Ignored by other index types.
        precision: Flat index only: the arithmetic that picks the candidates.
            ``"float32"`` (default) or ``"bfloat16"`` (inputs rounded to bfloat16, about
            4x the matrix-product speed on CPUs with AVX512-BF16 or AMX). Either way the
            candidates that could be in the top k are re-scored exactly, so both return
            the same rows, scores and order (see `search`). bfloat16 keeps a bfloat16 copy
            of the gallery (2 * D bytes per row), and is slower than float32 where many
            rows lie within its error margin of the k-th score (3x slower at k = 100 on
            trained embeddings in docs/search.md): measure before choosing it. Another
            value than float32 with IVF / HNSW raises `ValueError`. Settable later
            through the `precision` property.

    IVF training: an IVF index must be trained before vectors can be added. Call `train`
    with a representative sample, or let the first `add` train on its own batch; in the
    latter case that first batch decides ``nlist`` and the centroids, so make it large
    and representative (with automatic nlist a tiny first batch gives a 1-list IVF, i.e.
    a slow exact scan, for everything added later).

    Memory: flat and IVF-Flat store every vector as float32 (4 * D bytes per row, plus 8
    bytes per row for IVF ids); HNSW-Flat adds about ``2 * hnsw_m * 4`` bytes per row of
    graph links. Metadata costs 16 bytes per row plus the path strings.
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: Metric = "cosine",
        index_type: IndexType = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 200,
        precision: Precision = "float32",
    ) -> None:
        self._dim = _positive_int(dim, "dim")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if index_type not in _INDEX_TYPES:
            raise ValueError(f"index_type must be one of {_INDEX_TYPES}, got {index_type!r}")
        self._metric: Metric = metric
        self._index_type: IndexType = index_type
        self._requested_nlist = None if nlist is None else _positive_int(nlist, "nlist")
        self._nprobe = _positive_int(nprobe, "nprobe")
        self._hnsw_m = _positive_int(hnsw_m, "hnsw_m", minimum=2)
        self._ef_search = _positive_int(ef_search, "ef_search")
        self._ef_construction = _positive_int(ef_construction, "ef_construction")
        self._precision: Precision = "float32"
        self.precision = precision
        self._faiss_metric = (
            faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        )
        # IVF is created at training time, once nlist is known; the others exist at once.
        self._index: faiss.Index | None = None
        if index_type == "flat":
            self._index = faiss.IndexFlat(self._dim, self._faiss_metric)
        elif index_type == "hnsw":
            self._index = faiss.IndexHNSWFlat(self._dim, self._hnsw_m, self._faiss_metric)
            self._index.hnsw.efSearch = self._ef_search
            self._index.hnsw.efConstruction = self._ef_construction
        # Metadata arrives one `add` at a time; chunks are concatenated lazily so that many
        # small adds stay linear in the total size.
        self._pid_chunks: list[np.ndarray] = []
        self._camid_chunks: list[np.ndarray] = []
        self._paths: list[str | None] = []
        # Flat search's derived views of the gallery (squared norms, bfloat16 copy), built
        # on first use and dropped by every add.
        self._flat_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self._dim

    @property
    def metric(self) -> Metric:
        """``"cosine"``, ``"euclidean"`` or ``"inner_product"``."""
        return self._metric

    @property
    def index_type(self) -> IndexType:
        """``"flat"``, ``"ivf"`` or ``"hnsw"``."""
        return self._index_type

    @property
    def is_trained(self) -> bool:
        """Whether vectors can be added (always True except for an untrained IVF index)."""
        return self._index is not None and bool(self._index.is_trained)

    @property
    def nlist(self) -> int | None:
        """IVF lists actually used once trained, else the requested value (None = auto)."""
        if self._index_type == "ivf" and self._index is not None:
            return int(self._index.nlist)
        return self._requested_nlist

    @property
    def nprobe(self) -> int:
        """IVF lists visited per query; settable to trade speed for recall."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = _positive_int(value, "nprobe")
        if self._index_type == "ivf" and self._index is not None:
            self._index.nprobe = self._nprobe

    @property
    def hnsw_m(self) -> int:
        """HNSW graph degree (fixed at construction)."""
        return self._hnsw_m

    @property
    def ef_construction(self) -> int:
        """HNSW build beam width (fixed at construction)."""
        return self._ef_construction

    @property
    def ef_search(self) -> int:
        """HNSW search beam width; settable to trade speed for recall."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = _positive_int(value, "ef_search")
        if self._index_type == "hnsw" and self._index is not None:
            self._index.hnsw.efSearch = self._ef_search

    @property
    def precision(self) -> Precision:
        """Flat search's candidate arithmetic, ``"float32"`` or ``"bfloat16"``; settable."""
        return self._precision

    @precision.setter
    def precision(self, value: Precision) -> None:
        if value not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {value!r}")
        if value != "float32" and self._index_type != "flat":
            raise ValueError(
                f"precision={value!r} needs index_type='flat' (IVF and HNSW search in faiss's "
                f"float32), got index_type={self._index_type!r}"
            )
        self._precision = value

    @property
    def pids(self) -> np.ndarray:
        """(N,) int64 identity of every gallery row, -1 where not given (a copy)."""
        return self._consolidated(self._pid_chunks).copy()

    @property
    def camids(self) -> np.ndarray:
        """(N,) int64 camera id of every gallery row, -1 where not given (a copy)."""
        return self._consolidated(self._camid_chunks).copy()

    @property
    def paths(self) -> list[str | None]:
        """Image path of every gallery row, None where not given (a copy)."""
        return list(self._paths)

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def __repr__(self) -> str:
        parts = [
            f"dim={self._dim}",
            f"metric={self._metric!r}",
            f"index_type={self._index_type!r}",
            f"size={len(self)}",
        ]
        if self._index_type == "ivf":
            parts += [f"nlist={self.nlist}", f"nprobe={self._nprobe}"]
            if not self.is_trained:
                parts.append("trained=False")
        elif self._index_type == "hnsw":
            parts += [
                f"hnsw_m={self._hnsw_m}",
                f"ef_construction={self._ef_construction}",
                f"ef_search={self._ef_search}",
            ]
        else:
            parts.append(f"precision={self._precision!r}")
        return f"GalleryIndex({', '.join(parts)})"

    # ------------------------------------------------------------------ building
    def train(self, embeddings: ArrayLike) -> None:
        """Train the IVF coarse quantiser (k-means) on a representative sample.

        Must be called before the first `add` if you do not want the first batch to be
        the training set. ``nlist`` is chosen from the sample size as described in the
        class docstring. Flat and HNSW indexes need no training: the sample is validated
        and otherwise ignored, so the same code path works for every index type.

        Args:
            embeddings: (M, D) float array (numpy or torch); converted to float32 and, for
                cosine, L2-normalised. Not added to the index.

        Raises:
            RuntimeError: The IVF index is already trained (retraining would invalidate the
                stored assignment of vectors to lists).
            ValueError: Empty sample, fewer than ``MIN_POINTS_PER_LIST * nlist`` vectors for
                an explicit nlist, wrong dimension, non-finite or (cosine) zero vectors.
        """
        vectors = self._prepare_vectors(embeddings, "embeddings")
        if self._index_type != "ivf":
            return
        if self._index is not None:
            raise RuntimeError(
                f"this IVF index is already trained (nlist={self.nlist}, size={len(self)}); "
                "build a new GalleryIndex to retrain"
            )
        if vectors.shape[0] == 0:
            raise ValueError("embeddings is empty: IVF training needs at least 1 vector")
        self._train_ivf(vectors)

    def add(
        self,
        embeddings: ArrayLike,
        *,
        pids: LabelsLike | None = None,
        camids: LabelsLike | None = None,
        paths: PathsLike | None = None,
    ) -> None:
        """Append gallery vectors and their metadata; may be called repeatedly.

        New rows get the numbers ``len(self) .. len(self) + N - 1``. All inputs are
        validated before anything is stored, so a rejected call leaves the index unchanged.
        An untrained IVF index trains on this batch first (see the class docstring).

        Args:
            embeddings: (N, D) or (D,) float array, numpy or torch of any float dtype;
                stored as float32. For cosine each row is L2-normalised (the caller's
                array is not modified).
            pids: N integer identities, or None (stored as -1).
            camids: N integer camera ids, or None (stored as -1).
            paths: N image paths (str or path-like), or None (stored as None).

        Raises:
            TypeError: Non-float embeddings, non-integer pids/camids, paths given as a
                single string.
            ValueError: Wrong dimension, non-finite values, (cosine) zero vectors,
                metadata whose length differs from N, or (untrained IVF with an explicit
                nlist) fewer than ``MIN_POINTS_PER_LIST * nlist`` vectors to train on.
        """
        vectors = self._prepare_vectors(embeddings, "embeddings")
        n = vectors.shape[0]
        pid_array = self._prepare_labels(pids, "pids", n)
        camid_array = self._prepare_labels(camids, "camids", n)
        path_list = self._prepare_paths(paths, n)
        if n == 0:
            return
        if self._index is None:
            self._train_ivf(vectors)
        assert self._index is not None
        self._index.add(vectors)
        self._flat_cache.clear()
        self._pid_chunks.append(pid_array)
        self._camid_chunks.append(camid_array)
        self._paths.extend(path_list)

    def _train_ivf(self, vectors: np.ndarray) -> None:
        n = vectors.shape[0]
        if self._requested_nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(n)), n // _AUTO_POINTS_PER_LIST))
        else:
            nlist = self._requested_nlist
            if n < nlist * MIN_POINTS_PER_LIST:
                raise ValueError(
                    f"IVF with nlist={nlist} needs at least {nlist * MIN_POINTS_PER_LIST} "
                    f"training vectors ({MIN_POINTS_PER_LIST} per list) but got {n}; call "
                    "train() with a larger representative sample before add(), or pass a "
                    f"smaller nlist (at most {n // MIN_POINTS_PER_LIST} for {n} vectors)"
                )
        quantizer = faiss.IndexFlat(self._dim, self._faiss_metric)
        # faiss's Python wrapper keeps a reference to `quantizer` inside the IVF object.
        index = faiss.IndexIVFFlat(quantizer, self._dim, nlist, self._faiss_metric)
        # The points-per-list policy is decided above; this only stops faiss from printing
        # its own 39-per-centroid warning to stderr for deliberate explicit nlist values.
        index.cp.min_points_per_centroid = MIN_POINTS_PER_LIST
        index.train(vectors)
        index.nprobe = self._nprobe
        self._index = index

    # ------------------------------------------------------------------ searching
    def search(self, queries: ArrayLike, k: int = 10) -> SearchResult:
        """Find the k best gallery rows for each query.

        IVF and HNSW indexes search with faiss. A flat index is searched exactly, in three
        steps per block of queries: (1) candidate scores: faiss's float32 search for the
        best k + 4 rows, or with ``precision="bfloat16"`` a bfloat16 matrix product over
        every row and its best k + 48; (2) the rows whose candidate score lies within twice
        a proven bound on its rounding error (plus the re-score's) of the k-th best are
        kept, which provably includes every row of the exact top k and every row tied
        with it (a query whose margin reaches past its kept slots gets its whole row
        scored); (3) those rows are re-scored from the stored float32 vectors (float32
        products summed by one torch reduction per pair) and the top k taken, ties going
        to the lower row number. The same (query, row) pair always gets the same score,
        so float32 and bfloat16 precision return identical results.

        Args:
            queries: (Q, D) or (D,) float array, numpy or torch; a single vector is treated
                as Q = 1. Normalised like the gallery for cosine.
            k: Neighbours per query. Clipped to ``len(self)`` when larger, so the result
                has ``min(k, len(self))`` columns.

        Returns:
            A `SearchResult` of (Q, min(k, N)) arrays in best-first order.

        Raises:
            ValueError: Empty index, wrong query dimension, non-finite or (cosine) zero
                queries, k < 1.
        """
        k = _positive_int(k, "k")
        self._require_nonempty("search")
        vectors = self._prepare_vectors(queries, "queries")
        k = min(k, len(self))
        assert self._index is not None
        if vectors.shape[0] == 0:
            raw = np.empty((0, k), dtype=np.float32)
            indices = np.empty((0, k), dtype=np.int64)
        elif self._index_type == "flat":
            return self._exact_search(torch.from_numpy(vectors), k)
        else:
            raw, indices = self._index.search(vectors, k)
        return self._make_result(raw, indices)

    # ------------------------------------------------------------------ exact search
    def _gallery_tensor(self) -> torch.Tensor:
        """(N, D) float32 view (no copy) of the vectors stored in the flat faiss index."""
        assert self._index is not None
        flat = faiss.rev_swig_ptr(self._index.get_xb(), len(self) * self._dim)
        return torch.from_numpy(flat).view(len(self), self._dim)

    def _cached(self, name: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        if name not in self._flat_cache:
            self._flat_cache[name] = build()
        return self._flat_cache[name]

    def _exact_search(self, queries: torch.Tensor, k: int) -> SearchResult:
        gallery = self._gallery_tensor()
        squared_norms = self._cached("squared_norms", lambda: gallery.square().sum(dim=1))
        low = None
        if self._precision == "bfloat16":
            low = self._cached("bfloat16", lambda: gallery.to(torch.bfloat16))
        euclidean = self._metric == "euclidean"
        width = min(k + _EXTRA_CANDIDATES[self._precision], len(self))
        if low is None:
            # One faiss call for all queries: faiss blocks them itself.
            raw, found = self._index.search(queries.numpy(), width)
            # Larger is better: scores, or minus faiss's squared distances.
            float32_scores = torch.from_numpy(-raw if euclidean else raw)
            float32_candidates = torch.from_numpy(found)
        block = max(1, _SCORE_BLOCK_BYTES // (4 * len(self)))
        values = np.empty((queries.shape[0], k), dtype=np.float32)
        indices = np.empty((queries.shape[0], k), dtype=np.int64)
        # Reused by every block: a fresh 64 MB tensor per block costs page faults of the
        # order of the top-k itself.
        scores = None if low is None else torch.empty(min(block, queries.shape[0]), len(self))
        for start in range(0, queries.shape[0], block):
            rows = slice(start, start + block)
            if scores is None:
                top_scores, candidates = float32_scores[rows], float32_candidates[rows]
                block_scores = None
            else:
                block_scores = scores[: len(queries[rows])]
                block_scores.copy_(queries[rows].to(torch.bfloat16) @ low.T)
                if euclidean:
                    block_scores.mul_(2).sub_(squared_norms)
                top_scores, candidates = block_scores.topk(width, dim=1)
            values[rows], indices[rows] = _exact_top_k_block(
                queries[rows], gallery, squared_norms, k, top_scores, candidates,
                euclidean=euclidean, bfloat16=low is not None, scores=block_scores,
            )
        return self._make_result(values, indices, squared=False)

    def recall_at_k(self, queries: ArrayLike, k: int = 10) -> float:
        """Fraction of the exact top-k neighbours that this index's search returns.

        For each query the exact top-``min(k, N)`` rows are computed by brute force over the
        stored vectors and compared (as sets of row numbers) with `search`; the result is
        averaged over queries. A flat index is exact, so its recall is 1.0 by definition.
        Exact ties in the reference can make a correct approximate answer count as a miss;
        with continuous float features this is negligible.

        Memory: no second copy of the gallery is kept. The stored vectors are reconstructed
        from the index in blocks of about 64 MB; for IVF the first call also builds
        faiss's direct map (8 bytes per row, kept afterwards).

        Args:
            queries: (Q, D) or (D,) float array with Q >= 1.
            k: Neighbours compared per query, clipped to ``len(self)``.

        Returns:
            Recall in [0, 1].

        Raises:
            ValueError: Empty index, no queries, or invalid queries / k as in `search`.
        """
        k = _positive_int(k, "k")
        self._require_nonempty("compute recall on")
        vectors = self._prepare_vectors(queries, "queries")
        if vectors.shape[0] == 0:
            raise ValueError("queries is empty: recall needs at least one query")
        if self._index_type == "flat":
            return 1.0
        assert self._index is not None
        k = min(k, len(self))
        _, approximate = self._index.search(vectors, k)
        exact = self._exact_top_k(vectors, k)
        hits = 0
        for start in range(0, vectors.shape[0], _RECALL_QUERY_CHUNK):
            stop = start + _RECALL_QUERY_CHUNK
            found = approximate[start:stop, :, None] == exact[start:stop, None, :]
            hits += int(found.any(axis=2).sum())
        return hits / (vectors.shape[0] * k)

    def _exact_top_k(self, vectors: np.ndarray, k: int) -> np.ndarray:
        assert self._index is not None
        if self._index_type == "ivf" and self._index.direct_map.type == faiss.DirectMap.NoMap:
            self._index.make_direct_map()
        higher_is_better = self._faiss_metric == faiss.METRIC_INNER_PRODUCT
        heap = faiss.ResultHeap(vectors.shape[0], k, keep_max=higher_is_better)
        block = max(k, _EXACT_BLOCK_BYTES // (4 * self._dim))
        for start in range(0, len(self), block):
            count = min(block, len(self) - start)
            gallery = self._index.reconstruct_n(start, count)
            raw, indices = faiss.knn(vectors, gallery, min(k, count), metric=self._faiss_metric)
            heap.add_result(raw, indices + start)
        heap.finalize()
        return heap.I

    def _make_result(
        self, raw: np.ndarray, indices: np.ndarray, *, squared: bool = True
    ) -> SearchResult:
        """Attach metadata; euclidean ``raw`` are squared distances (faiss's) if ``squared``."""
        missing = indices < 0
        safe = np.where(missing, 0, indices)
        all_pids = self._consolidated(self._pid_chunks)
        all_camids = self._consolidated(self._camid_chunks)
        pids = np.where(missing, -1, all_pids[safe]).astype(np.int64)
        camids = np.where(missing, -1, all_camids[safe]).astype(np.int64)
        paths = [[self._paths[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        if self._metric == "euclidean":
            # faiss returns squared L2 computed as |x|^2 + |y|^2 - 2xy, which can round to a
            # tiny negative number for near-duplicates; clamp before the square root.
            distances = (
                np.sqrt(np.maximum(raw, 0.0), dtype=np.float32)
                if squared
                else np.array(raw, dtype=np.float32)
            )
            distances[missing] = np.inf
            return SearchResult(self._metric, indices, pids, camids, paths, distances=distances)
        scores = np.array(raw, dtype=np.float32)
        scores[missing] = -np.inf
        return SearchResult(self._metric, indices, pids, camids, paths, scores=scores)

    # ------------------------------------------------------------------ validation
    def _require_nonempty(self, action: str) -> None:
        if len(self) == 0:
            raise ValueError(f"cannot {action} an empty GalleryIndex: add() gallery vectors first")

    def _prepare_vectors(self, data: ArrayLike, name: str) -> np.ndarray:
        if isinstance(data, torch.Tensor):
            if not data.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {data.dtype}")
            # .float() first: numpy has no bfloat16.
            array = data.detach().to(device="cpu", dtype=torch.float32).numpy()
        else:
            array = np.asarray(data)
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise ValueError(
                f"{name} must have shape (N, {self._dim}) or ({self._dim},), "
                f"got shape {tuple(array.shape)}"
            )
        if array.shape[1] != self._dim:
            raise ValueError(
                f"{name} has dimension {array.shape[1]} but this index has "
                f"dim={self._dim} (shape {tuple(array.shape)})"
            )
        if self._metric == "cosine":
            # Always copy: normalisation happens in place and must not touch the caller's data.
            array = np.array(array, dtype=np.float32, order="C", copy=True)
        else:
            array = np.ascontiguousarray(array, dtype=np.float32)
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{name} has NaN or infinite values in rows {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}"
            )
        if self._metric == "cosine":
            norms = np.linalg.norm(array, axis=1)
            reject_zero_vectors(norms, name)
            array /= norms[:, None]
        return array

    @staticmethod
    def _prepare_labels(values: LabelsLike | None, name: str, n: int) -> np.ndarray:
        if values is None:
            return np.full(n, -1, dtype=np.int64)
        if isinstance(values, torch.Tensor):
            array = values.detach().cpu().numpy()
        else:
            array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
        if array.shape[0] != n:
            raise ValueError(f"{name} has length {array.shape[0]} but embeddings has {n} rows")
        # An empty list comes out as float64; only a non-empty array has a meaningful dtype.
        if n and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
        return array.astype(np.int64)

    @staticmethod
    def _prepare_paths(paths: PathsLike | None, n: int) -> list[str | None]:
        if paths is None:
            return [None] * n
        if isinstance(paths, str | bytes | os.PathLike):
            raise TypeError(f"paths must be a sequence of N paths, got a single path {paths!r}")
        result = [os.fspath(p) for p in paths]
        if len(result) != n:
            raise ValueError(f"paths has length {len(result)} but embeddings has {n} rows")
        for value in result:
            if not isinstance(value, str):
                raise TypeError(f"paths must be str or os.PathLike[str], got {value!r}")
        return result

    @staticmethod
    def _consolidated(chunks: list[np.ndarray]) -> np.ndarray:
        if len(chunks) != 1:
            merged = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
            chunks[:] = [merged]
        return chunks[0]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index and its metadata to ``directory``, atomically.

        Layout: ``index.faiss`` (faiss.write_index), ``pids.npy`` and ``camids.npy``
        (int64), ``paths.json`` (list of str or null) and ``config.json`` (format
        version, constructor arguments, size, and the size and SHA-256 of every file so
        `load` detects corruption).

        Everything is written to a temporary sibling directory, flushed to disk, then
        renamed into place. If ``directory`` already holds a saved index, it is first
        renamed to a hidden ``.<name>.old-<id>`` sibling and deleted only after the new one
        is in place, so a crash at any point leaves either the old or the new index
        complete (in the instant between the two renames, the old one is at that hidden
        path). To protect unrelated data, an existing non-empty directory that contains
        anything besides these five files is refused.

        Returns:
            The directory path.

        Raises:
            ValueError: An untrained IVF index (nothing to save yet).
            FileExistsError: ``directory`` exists and is not a saved index or empty folder.
        """
        if self._index is None:
            raise ValueError("cannot save an untrained IVF GalleryIndex: add() or train() first")
        target = Path(directory)
        _check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self._write_files(staging)
            replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _write_files(self, directory: Path) -> None:
        assert self._index is not None
        faiss.write_index(self._index, str(directory / _INDEX_FILE))
        np.save(directory / _PIDS_FILE, self._consolidated(self._pid_chunks), allow_pickle=False)
        np.save(
            directory / _CAMIDS_FILE, self._consolidated(self._camid_chunks), allow_pickle=False
        )
        (directory / _PATHS_FILE).write_text(json.dumps(self._paths), encoding="utf-8")
        files = {}
        for name in _DATA_FILES:
            _fsync_file(directory / name)
            files[name] = {
                "bytes": (directory / name).stat().st_size,
                "sha256": _sha256(directory / name),
            }
        config = {
            "kind": _CONFIG_KIND,
            "format_version": FORMAT_VERSION,
            "dim": self._dim,
            "metric": self._metric,
            "index_type": self._index_type,
            "nlist": self._requested_nlist,
            "nprobe": self._nprobe,
            "hnsw_m": self._hnsw_m,
            "ef_search": self._ef_search,
            "ef_construction": self._ef_construction,
            "precision": self._precision,
            "size": len(self),
            "faiss_version": faiss.__version__,
            "files": files,
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        _fsync_file(directory / _CONFIG_FILE)
        fsync_directory(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GalleryIndex:
        """Load an index written by `save`.

        Every file's size and SHA-256 are checked against ``config.json`` and the parts
        are checked for agreement (dimension, metric, index type, row counts).

        Raises:
            FileNotFoundError: ``directory`` or one of its files is missing (names it).
            NotADirectoryError: ``directory`` is a file.
            ValueError: A file is corrupt, unreadable, inconsistent, or of an unsupported
                format version (names the file).
        """
        root = Path(directory)
        if not root.exists():
            raise FileNotFoundError(f"no saved GalleryIndex at {root}: directory does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory (expected a saved GalleryIndex)")
        config = _read_config(root / _CONFIG_FILE)
        for name in _DATA_FILES:
            _verify_file(root / name, config["files"][name])

        index_path = root / _INDEX_FILE
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as error:
            raise ValueError(f"{index_path} could not be read by faiss: {error}") from error
        pids = _load_labels(root / _PIDS_FILE)
        camids = _load_labels(root / _CAMIDS_FILE)
        paths = _load_paths(root / _PATHS_FILE)

        try:
            gallery = cls(
                config["dim"],
                metric=config["metric"],
                index_type=config["index_type"],
                nlist=config["nlist"],
                nprobe=config["nprobe"],
                hnsw_m=config["hnsw_m"],
                ef_search=config["ef_search"],
                ef_construction=config["ef_construction"],
                # Saves from before the precision option searched in float32.
                precision=config.get("precision", "float32"),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{root / _CONFIG_FILE} holds invalid settings: {error}") from error
        expected_class = {
            "flat": faiss.IndexFlat,
            "ivf": faiss.IndexIVFFlat,
            "hnsw": faiss.IndexHNSWFlat,
        }[gallery.index_type]
        problems = []
        if not isinstance(index, expected_class):
            problems.append(
                f"faiss index is {type(index).__name__}, config says "
                f"index_type={gallery.index_type!r}"
            )
        if index.d != gallery.dim:
            problems.append(f"faiss index has dim {index.d}, config says {gallery.dim}")
        if index.metric_type != gallery._faiss_metric:
            problems.append(
                f"faiss metric type {index.metric_type} does not match metric={gallery.metric!r}"
            )
        counts = {
            "config size": config["size"],
            _INDEX_FILE: int(index.ntotal),
            _PIDS_FILE: len(pids),
            _CAMIDS_FILE: len(camids),
            _PATHS_FILE: len(paths),
        }
        if len(set(counts.values())) != 1:
            problems.append(f"row counts disagree: {counts}")
        if problems:
            raise ValueError(f"saved GalleryIndex at {root} is inconsistent: {'; '.join(problems)}")

        gallery._index = index
        # Search-time knobs come from config.json, the single source of truth.
        gallery.nprobe = gallery._nprobe
        gallery.ef_search = gallery._ef_search
        gallery._pid_chunks = [pids]
        gallery._camid_chunks = [camids]
        gallery._paths = paths
        return gallery


# ---------------------------------------------------------------------- exact search
def _exact_top_k_block(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    squared_norms: torch.Tensor,
    k: int,
    top_scores: torch.Tensor,
    candidates: torch.Tensor,
    *,
    euclidean: bool,
    bfloat16: bool,
    scores: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 3 of `GalleryIndex.search` for a block of B queries.

    Args:
        queries: (B, D) float32.
        gallery: (N, D) float32, the stored vectors.
        squared_norms: (N,) float32 squared norms of ``gallery``.
        k: Neighbours per query, <= N.
        top_scores: (B, W) candidate scores of each query's best W >= k rows, best first
            (larger is better: q.g, or for Euclidean -d^2 up to a per-query constant).
        candidates: (B, W) int64 their row numbers.
        euclidean: Rank by smallest Euclidean distance instead of largest inner product.
        bfloat16: Whether the candidate scores come from bfloat16 inputs (wider margin).
        scores: (B, N) the candidate scores of every row, or None (float32 from faiss:
            rows whose margin reaches past the W slots are then scored here in float32).

    Returns:
        (B, k) float32 scores (inner product) or distances (euclidean), best first, and
        (B, k) int64 row numbers.
    """
    width = top_scores.shape[1]
    margin = _candidate_margin(queries, squared_norms, bfloat16, euclidean=euclidean)
    threshold = top_scores[:, k - 1] - margin
    # top_scores are sorted, so each query's candidates are a prefix of its slots.
    counts = (top_scores >= threshold[:, None]).sum(dim=1)
    values = torch.empty(len(queries), k)
    indices = torch.empty(len(queries), k, dtype=torch.int64)
    # Where every slot is a candidate the margin may reach further: scan those whole rows.
    overflow = (counts == width) & (width < len(gallery))
    # A slice, not an index tensor, in the usual case: indexing would copy the block.
    regular = (~overflow).nonzero(as_tuple=True)[0] if overflow.any() else slice(None)
    if len(counts[regular]):
        kept = int(counts[regular].max())
        values[regular], indices[regular] = _exact_top_k_of(
            queries[regular], gallery, candidates[regular, :kept], counts[regular], k,
            euclidean=euclidean,
        )
    if overflow.any():
        wide = overflow.nonzero(as_tuple=True)[0]
        if scores is None:  # faiss kept only the top slots: score these rows in full
            wide_scores = queries[wide] @ gallery.T
            if euclidean:
                wide_scores.mul_(2).sub_(squared_norms)
            wide_threshold = wide_scores.topk(k, dim=1).values[:, -1] - margin[wide]
        else:
            wide_scores, wide_threshold = scores[wide], threshold[wide]
        wide_candidates, wide_counts = _padded_rows(wide_scores >= wide_threshold[:, None])
        values[wide], indices[wide] = _exact_top_k_of(
            queries[wide], gallery, wide_candidates, wide_counts, k, euclidean=euclidean
        )
    return values.numpy(), indices.numpy()


def _padded_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, C) bool -> (R, max count) int64 column numbers of each row's True entries, in
    order and padded with 0, and (R,) counts."""
    rows, columns = mask.nonzero(as_tuple=True)
    counts = mask.sum(dim=1)
    starts = counts.cumsum(0) - counts
    padded = torch.zeros(len(counts), int(counts.max()), dtype=torch.int64)
    padded[rows, torch.arange(len(rows)) - starts[rows]] = columns
    return padded, counts


def _candidate_margin(
    queries: torch.Tensor, squared_norms: torch.Tensor, bfloat16: bool, *, euclidean: bool
) -> torch.Tensor:
    """(B,) how far below the k-th best candidate score a row of the exact top k can lie.

    With |s' - s| <= e (candidate vs exact score) and |t - s| <= r (exact vs re-scored,
    the ranking key), every row whose key ties or beats the k-th best key has
    s' >= (k-th best s') - 2 (e + r). Bounds use |q| and the largest |g| (Higham's
    gamma_D for a length-D float32 dot product, for the candidate score and for the
    re-score; bfloat16 adds the rounding of both inputs and of the output, accumulation
    being float32), plus 25% for the rounding of this margin's own arithmetic; a wider
    margin costs speed (more re-scored rows), never correctness.
    """
    dim = queries.shape[1]
    query_norms = queries.norm(dim=1).double()
    gallery_norm = float(squared_norms.max().double().sqrt())
    product = query_norms * gallery_norm  # bounds sum_i |q_i g_i|
    float32_unit = (dim + 8) * _FLOAT32_UNIT
    unit = float32_unit + (3 * _BFLOAT16_UNIT + 4 * _BFLOAT16_UNIT**2 if bfloat16 else 0.0)
    if euclidean:
        squares = (query_norms + gallery_norm) ** 2  # bounds |q|^2 + |g|^2 + 2 |q||g|
        candidate_error = 2 * unit * product + float32_unit * squares
        rescore_error = 2 * float32_unit * squares
    else:
        candidate_error = unit * product
        rescore_error = float32_unit * product
    # The absolute term covers subnormal inputs, whose rounding is not relative.
    margin = 2.5 * (candidate_error + rescore_error) + dim * 2.0**-120
    return margin.float()


def _exact_top_k_of(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    candidates: torch.Tensor,
    counts: torch.Tensor,
    k: int,
    *,
    euclidean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each query's candidates and keep the best k.

    The value of a pair is q.g (or |q - g|) from the stored float32 vectors: float32
    products (or squared differences) summed along D by one torch reduction per pair, so
    a pair's value does not depend on which other pairs are scored with it.

    Args:
        queries: (B, D) float32.
        gallery: (N, D) float32.
        candidates: (B, C) int64 gallery rows; only the first ``counts[b]`` of row b count.
        counts: (B,) candidates per query, each >= k.
        k: Neighbours to keep.

    Returns:
        (B, k) float32 values, best first (ties to the lower row number), and (B, k) rows.
    """
    dim, width = queries.shape[1], candidates.shape[1]
    block = max(1, _RESCORE_BLOCK_BYTES // (4 * dim * width))
    values = torch.empty(candidates.shape, dtype=torch.float32)
    # One buffer for the gathered rows of every block (fresh ones would page-fault).
    buffer = torch.empty(min(block, len(queries)) * width, dim)
    for start in range(0, len(queries), block):
        rows = slice(start, start + block)
        count = len(candidates[rows])
        terms = torch.index_select(
            gallery, 0, candidates[rows].reshape(-1), out=buffer[: count * width]
        ).view(count, width, dim)
        if euclidean:
            values[rows] = terms.sub_(queries[rows, None, :]).square_().sum(dim=2).sqrt_()
        else:
            values[rows] = terms.mul_(queries[rows, None, :]).sum(dim=2)
    # Best first: highest score or smallest distance, then the lower row number. Slots past
    # a query's count sort last.
    padding = torch.arange(candidates.shape[1]) >= counts[:, None]
    keys = (values if euclidean else values.neg()).masked_fill(padding, torch.inf)
    _, order = candidates.sort(dim=1, stable=True)
    _, best = keys.gather(1, order).sort(dim=1, stable=True)
    chosen = order.gather(1, best[:, :k])
    return values.gather(1, chosen), candidates.gather(1, chosen)


# ---------------------------------------------------------------------- file helpers
def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; cannot save an index there")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in (*_DATA_FILES, _CONFIG_FILE))
    if foreign:
        raise FileExistsError(
            f"refusing to replace {target}: it contains {foreign[:5]}, which are not part of "
            "a saved GalleryIndex; choose a new or empty directory"
        )


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: not a saved GalleryIndex, or an incomplete one"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON (corrupt saved index): {error}") from error
    if not isinstance(config, dict) or config.get("kind") != _CONFIG_KIND:
        raise ValueError(f"{path} does not describe a GalleryIndex (missing kind={_CONFIG_KIND!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version={version!r}; this version of reid_transformers reads "
            f"format_version={FORMAT_VERSION}"
        )
    required = (
        *("dim", "metric", "index_type", "nlist", "nprobe"),
        *("hnsw_m", "ef_search", "ef_construction", "size"),
    )
    missing = [key for key in required if key not in config]
    files = config.get("files")
    if not isinstance(files, dict) or any(
        not isinstance(files.get(name), dict) or {"bytes", "sha256"} - files[name].keys()
        for name in _DATA_FILES
    ):
        missing.append("files")
    if missing:
        raise ValueError(f"{path} is missing keys {missing}")
    return config


def _verify_file(path: Path, expected: dict[str, Any]) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the saved GalleryIndex is incomplete")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise ValueError(
            f"{path} is corrupt: {size} bytes, config.json expects {expected['bytes']}"
        )
    if _sha256(path) != expected["sha256"]:
        raise ValueError(f"{path} is corrupt: its SHA-256 does not match config.json")


def _load_labels(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npy file: {error}") from error
    if array.ndim != 1 or array.dtype != np.int64:
        raise ValueError(f"{path} must hold a 1-D int64 array, got {array.dtype} {array.shape}")
    return array


def _load_paths(path: Path) -> list[str | None]:
    try:
        paths = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(paths, list) or any(p is not None and not isinstance(p, str) for p in paths):
        raise ValueError(f"{path} must hold a JSON list of strings or nulls")
    return paths
