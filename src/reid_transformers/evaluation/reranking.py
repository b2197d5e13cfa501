"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised and memory-bounded.

This computes the same re-ranked distance as the authors' widely used numpy
``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` but never builds an
``N x N`` matrix (``N = num_query + num_gallery``):

* distances are computed once per pair of the symmetric ``N x N`` matrix (diagonal blocks,
  then for every block of rows a panel with all later columns, read both row- and
  column-wise), so only half of the ``N x N x D`` matrix product is done, and only a
  running top-``(k1 + 2)`` per row, the row maxima and the query x gallery part survive;
* on CPUs with bfloat16 matrix products, gallery x gallery distances come from one
  bfloat16 product with a rigorous error bound; only pairs whose place among the nearest
  (or as the farthest) could depend on the rounding get exact float32 distances, so the
  result is the same as in float32;
* the k-reciprocal sets, their expansion and the weights ``V`` are computed for all items at
  once with gathers and sorted searches over the ``(N, k1 + 1)`` neighbour table;
* ``V`` and its local query expansion are kept as sparse rows (CSR), and the Jaccard term is
  a sparse join through an inverted index over ``V``'s columns, accumulated with
  ``index_add_`` into one query chunk at a time.

See ``docs/reranking.md`` for the algorithm, the exactness argument and measured numbers.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils import release_freed_memory
from .ranking import DISTANCE_METRICS as _METRICS
from .ranking import (
    RANKING_PRECISIONS,
    all_finite,
    bfloat16_at_least,
    native_bfloat16_matmul,
    order_keys_,
    reject_zero_vectors,
)

__all__ = ["k_reciprocal_rerank"]

Metric = Literal["euclidean", "cosine"]

_DEFAULT_CHUNK_SIZE = 2048
# Rows of the (rows, k1 + 1, k1 + 1) gather tables built while finding k-reciprocal sets:
# 4096 rows with k1 = 20 is about 14 MB of int64 per table.
_ROW_CHUNK = 4096
# Upper bound on (query entry, gallery entry) pairs materialised at once in the Jaccard
# join. Each pair costs about 40 bytes of temporaries; keeping each temporary well below
# glibc's 32 MB mmap threshold lets the allocator reuse memory instead of page-faulting
# fresh pages on every chunk, which measured 2-3x faster.
_PAIR_BUDGET = 1 << 20
# Pairs per sampled matrix product when distances of scattered pairs are computed (a few
# MB of indices and results), and the size a log of candidate pairs may grow by between
# two prunings.
_PAIR_CHUNK = 1 << 18
# Entries of one piece of a distance panel: 2**24 float32 = 64 MiB (bfloat16: 32 MiB),
# plus a boolean mask of 16 MiB; pieces keep the working memory flat at any gallery size.
_PIECE_ENTRIES = 1 << 24
# Sample that sets the bfloat16 shift (_typical_near_distance): a 256 x 2048 distance
# block, small next to the gallery x gallery product.
_SAMPLE_ROWS = 256
_SAMPLE_COLS = 2048
# Distance entries per step when whole rows are re-ranked to settle exact ties
# (4M entries: about 80 MB of distances, sorted values and indices).
_FULL_ROW_ENTRIES = 1 << 22


@dataclass(frozen=True)
class _SparseRows:
    """Row-compressed sparse matrix: row ``r`` holds ``col[ptr[r]:ptr[r+1]]`` (ascending)."""

    ptr: torch.Tensor  # (num_rows + 1,) int64
    col: torch.Tensor  # (nnz,) int64
    val: torch.Tensor  # (nnz,) float32

    def row_ids(self) -> torch.Tensor:
        """Row index of every stored entry, shape ``(nnz,)``."""
        counts = self.ptr[1:] - self.ptr[:-1]
        rows = torch.arange(counts.numel(), device=counts.device)
        return rows.repeat_interleave(counts)


def k_reciprocal_rerank(
    query_embeddings: torch.Tensor | np.ndarray,
    gallery_embeddings: torch.Tensor | np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    precision: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Re-rank query-to-gallery distances with k-reciprocal encoding.

    Every query and gallery item (``N = Q + G`` in all) is encoded by its k-reciprocal
    neighbourhood; the result mixes the Jaccard distance between encodings with the original
    distance: ``(1 - lambda_value) * jaccard + lambda_value * original``. The output equals
    the authors' reference implementation (up to float32 rounding), including its stable
    index tie-break; see ``docs/reranking.md``.

    Args:
        query_embeddings: ``(Q, D)`` query embeddings, torch tensor or numpy array of any
            real dtype; computed in float32 on the tensor's device.
        gallery_embeddings: ``(G, D)`` gallery embeddings, same ``D`` and device.
        k1: Size of the neighbourhood for k-reciprocal sets (top ``k1 + 1`` including the
            item itself). The expansion step uses ``round(k1 / 2)`` (round half to even).
        k2: Number of nearest items averaged by local query expansion; ``1`` disables it.
            Must be at most ``k1 + 1``.
        lambda_value: Weight of the original distance, in ``[0, 1]``.
        metric: ``"euclidean"``: original distance is the squared Euclidean distance;
            ``"cosine"``: ``1 - cosine similarity``. Each row of the ``N x N`` original
            distance is then divided by its maximum, so on L2-normalised embeddings the two
            metrics give the same result (up to rounding).
        chunk_size: Rows per distance panel and at most that many query rows per Jaccard
            chunk; ``None`` uses 2048. Working memory beyond the inputs, their prepared
            float32 copy and the output is a few hundred MB (see ``docs/reranking.md``).
            The result does not depend on it.
        precision: How gallery x gallery distances are found. ``"float32"``: all computed
            in float32. ``"bfloat16"`` (CPU only): bfloat16 candidates with a rigorous error
            bound, and exact float32 distances for the pairs whose place could depend on
            the rounding, several times faster and the same result. ``"auto"`` (as in
            `evaluate_ranking`): bfloat16 on CPUs with native bfloat16 matrix products,
            float32 elsewhere. Query x gallery
            distances are always float32: they are part of the output.
        progress: Show tqdm progress bars.

    Returns:
        ``(Q, G)`` float32 tensor of re-ranked distances (smaller = more similar), on the
        input device. Values lie in ``[0, 1]``.

    Raises:
        TypeError: an embedding argument is not a tensor/array of real numbers.
        ValueError: wrong shapes, empty inputs, non-finite or (for cosine) zero-norm
            embeddings, a parameter outside its range, or ``precision="bfloat16"`` on a
            device other than the CPU.
    """
    query = _as_embedding_matrix(query_embeddings, "query_embeddings")
    gallery = _as_embedding_matrix(gallery_embeddings, "gallery_embeddings")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            "query_embeddings and gallery_embeddings must have the same embedding size, got "
            f"{query.shape[1]} and {gallery.shape[1]}"
        )
    if query.device != gallery.device:
        raise ValueError(
            "query_embeddings and gallery_embeddings must be on the same device, got "
            f"{query.device} and {gallery.device}"
        )
    _check_int("k1", k1, minimum=1)
    _check_int("k2", k2, minimum=1)
    if k2 > k1 + 1:
        raise ValueError(f"k2 must be at most k1 + 1 = {k1 + 1}, got {k2}")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, numbers.Real):
        raise ValueError(f"lambda_value must be a number in [0, 1], got {lambda_value!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if metric == "cosine":
        reject_zero_vectors(torch.linalg.vector_norm(query, dim=1), "query_embeddings")
        reject_zero_vectors(torch.linalg.vector_norm(gallery, dim=1), "gallery_embeddings")
    if chunk_size is None:
        chunk_size = _DEFAULT_CHUNK_SIZE
    _check_int("chunk_size", chunk_size, minimum=1)
    use_bfloat16 = _use_bfloat16(precision, query.device)

    num_query = query.shape[0]
    features = _prepare_features(torch.cat([query, gallery]), metric)
    # Converted copies of the inputs (if any were made) are no longer needed.
    del query, gallery
    num_items = features.shape[0]

    # The reference slices ``initial_rank[i, :k + 1]``, which silently shortens when there
    # are fewer than k + 1 items; clamping reproduces that.
    k_full = min(k1 + 1, num_items)
    k_half = min(int(round(k1 / 2)) + 1, num_items)
    k_expand = min(k2, num_items)

    everything = torch.arange(num_items, device=features.device)
    sq_norms = _pair_dots(features, everything, everything)
    # One spare place certifies the k_full-th one (see _neighbour_table).
    state = _RunningTopK(num_items, min(k_full + 1, num_items), features.device)
    bounds = _block_bounds(num_query, num_items, chunk_size)
    if use_bfloat16:
        # Before the output is allocated, so the two peaks do not add up.
        _gallery_neighbours_bfloat16(features, sq_norms, num_query, state, chunk_size, progress)
        bounds = [(start, stop) for start, stop in bounds if stop <= num_query]
        # Its many freed mid-sized buffers would otherwise stay resident under the output
        # (at MSMT17 scale: a few hundred MB of the peak).
        release_freed_memory()
    out = torch.empty(num_query, num_items - num_query, device=features.device)
    _exact_neighbours(features, sq_norms, bounds, state, out, progress)
    release_freed_memory()
    ranks, rank_dists, row_max = _neighbour_table(features, sq_norms, state, k_full)
    weights = _encode_neighbourhoods(features, sq_norms, row_max, ranks, rank_dists, k_full, k_half)
    # The Jaccard step needs neither, and at MSMT17 scale features take 0.8 GB.
    del features, sq_norms
    release_freed_memory()
    if k2 != 1:
        weights = _expand_queries(weights, ranks[:, :k_expand])
    _mix_jaccard(out, weights, row_max, num_query, float(lambda_value), chunk_size, progress)
    return out


def _use_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether gallery x gallery candidates come from bfloat16 (see ``precision``)."""
    if precision == "auto":
        return device.type == "cpu" and native_bfloat16_matmul()
    if precision not in RANKING_PRECISIONS:
        raise ValueError(f"precision must be one of {RANKING_PRECISIONS}, got {precision!r}")
    # The error bound assumes float32 accumulation, which CUDA's reduced-precision
    # bfloat16 reductions do not promise.
    if precision == "bfloat16" and device.type != "cpu":
        raise ValueError(f"precision='bfloat16' runs on the CPU only, got device {device}")
    return precision == "bfloat16"


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _as_embedding_matrix(x: object, name: str) -> torch.Tensor:
    """Return ``x`` as a contiguous ``(n, d)`` float32 tensor with ``n, d >= 1``."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {x.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    elif isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got torch dtype {x.dtype}")
        tensor = x.detach().to(torch.float32).contiguous()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(tensor.shape)}")
    if not all_finite(tensor):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _prepare_features(features: torch.Tensor, metric: str) -> torch.Tensor:
    """Map embeddings, in place, so that ``|a - b|^2`` is proportional to the distance.

    For cosine, ``|a/|a| - b/|b||^2 = 2 (1 - cos)``; the factor 2 cancels in the per-row
    max normalisation, so both metrics share one code path. Centring does not change
    squared distances but shrinks the norms in ``|a|^2 + |b|^2 - 2 a.b``, which keeps the
    float32 cancellation error small for embeddings with a large common offset.
    """
    if metric == "cosine":
        # Zero rows were refused by k_reciprocal_rerank, by name (reject_zero_vectors).
        features.div_(torch.linalg.vector_norm(features, dim=1).unsqueeze(1))
    # Any shift leaves distances unchanged, so a float32 mean is accurate enough.
    return features.sub_(features.mean(dim=0))


def _block_bounds(num_query: int, num_items: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split queries and gallery separately into near-equal blocks of <= chunk_size items.

    Keeping the query/gallery boundary on a block edge lets the gallery part of a query
    panel be copied straight into the output.
    """
    bounds: list[tuple[int, int]] = []
    for start, stop in ((0, num_query), (num_query, num_items)):
        count = -(-(stop - start) // chunk_size)
        edges = np.linspace(start, stop, count + 1).round().astype(int).tolist()
        bounds.extend(zip(edges[:-1], edges[1:], strict=True))
    return bounds


class _RunningTopK:
    """Per-row set of the ``size`` smallest values seen so far (ties kept arbitrarily), and
    the largest value seen per row. Values must be >= 0.

    Invariant used for certification: every value not kept is >= the largest kept one.
    """

    def __init__(self, num_rows: int, size: int, device: torch.device) -> None:
        self.size = size
        self.values = torch.full((num_rows, size), torch.inf, device=device)
        # Padding points one past the last item so it sorts after every real index.
        self.indices = torch.full((num_rows, size), num_rows, dtype=torch.long, device=device)
        self.row_max = torch.zeros(num_rows, device=device)

    def merge_block(self, block: torch.Tensor, row_start: int, col_start: int) -> None:
        """Merge every row of a dense block (items ``row_start...`` vs ``col_start...``)."""
        rows = slice(row_start, row_start + block.shape[0])
        torch.maximum(self.row_max[rows], block.amax(dim=1), out=self.row_max[rows])
        take = min(self.size, block.shape[1])
        vals, idx = torch.topk(block, take, dim=1, largest=False, sorted=False)
        merged_vals = torch.cat([self.values[rows], vals], dim=1)
        merged_idx = torch.cat([self.indices[rows], idx + col_start], dim=1)
        vals, pick = torch.topk(merged_vals, self.size, dim=1, largest=False, sorted=False)
        self.values[rows] = vals
        self.indices[rows] = merged_idx.gather(1, pick)

    def merge_panel(
        self,
        panel: torch.Tensor,
        row_start: int,
        col_start: int,
        scratch: torch.Tensor,
        mask_buf: torch.Tensor,
    ) -> None:
        """Merge an off-diagonal panel of a symmetric matrix: its rows belong to items
        ``row_start...`` and, read column-wise, to items ``col_start...``. ``scratch`` is
        a free float buffer of the panel's shape, ``mask_buf`` a flat bool buffer of at
        least ``_padded(panel.numel())`` entries."""
        rows = slice(row_start, row_start + panel.shape[0])
        cols = slice(col_start, col_start + panel.shape[1])
        torch.maximum(self.row_max[rows], panel.amax(dim=1), out=self.row_max[rows])
        torch.maximum(self.row_max[cols], panel.amax(dim=0), out=self.row_max[cols])
        # Only values below a row's current worst kept one can enter its set; after the
        # diagonal blocks that is a small fraction, so compare + nonzero replace a top-k.
        threshold = self.thresholds()
        limit = _limit_grid(threshold[rows], threshold[cols], torch.maximum, scratch)
        mask = mask_buf[: panel.numel()].view(panel.shape)
        i, j = _true_positions(torch.lt(panel, limit, out=mask), mask_buf)
        self.merge_symmetric(i + row_start, j + col_start, panel[i, j], threshold)

    def merge_symmetric(
        self, first: torch.Tensor, second: torch.Tensor, value: torch.Tensor, limit: torch.Tensor
    ) -> None:
        """Merge ``value[e]``, the value of both ``(first[e], second[e])`` and its mirror,
        into each side whose row limit (``(num_rows,)``) it is below; all pairs are new
        and no pair appears twice."""
        to_first, to_second = value < limit[first], value < limit[second]
        self.merge_entries(
            torch.cat([first[to_first], second[to_second]]),
            torch.cat([second[to_first], first[to_second]]),
            torch.cat([value[to_first], value[to_second]]),
        )

    def merge_entries(self, owner: torch.Tensor, other: torch.Tensor, value: torch.Tensor) -> None:
        """Merge scattered values ``value[e] >= 0`` from item ``owner[e]`` to ``other[e]``
        (no pair may already be kept).

        Rows are touched only if they own an entry, and the cost does not depend on how
        unevenly entries spread over rows: kept and new entries of those rows are sorted
        by (row, value) and the first ``size`` of every row are kept.
        """
        if owner.numel() == 0:
            return
        self.row_max.scatter_reduce_(0, owner, value, reduce="amax")
        per_row = torch.bincount(owner, minlength=self.values.shape[0])
        rows = torch.nonzero(per_row).flatten()
        all_owner = torch.cat([rows.repeat_interleave(self.size), owner])
        all_value = torch.cat([self.values[rows].flatten(), value])
        all_other = torch.cat([self.indices[rows].flatten(), other])
        # Non-negative float32 values (+inf included) order like their bit patterns read
        # as integers, so one int64 key sorts by (row, value).
        bits = all_value.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        order = torch.argsort((all_owner << 32) | bits)
        # Rows appear in ascending order, each with its ``size`` kept entries plus its new
        # ones; the first ``size`` of each group are its new smallest values.
        group = per_row[rows] + self.size
        group_start = torch.cumsum(group, dim=0) - group
        take = order[group_start.unsqueeze(1) + torch.arange(self.size, device=owner.device)]
        self.values[rows] = all_value[take]
        self.indices[rows] = all_other[take]

    def thresholds(self) -> torch.Tensor:
        """``(num_rows,)`` largest kept value per row; +inf while a row is not full."""
        return self.values.amax(dim=1)


def _limit_grid(
    row_limit: torch.Tensor,
    col_limit: torch.Tensor | None,
    combine: Callable[..., torch.Tensor],
    out: torch.Tensor,
) -> torch.Tensor:
    """``combine(row_limit[r], col_limit[c])`` for every entry of an ``(R, C)`` panel,
    written into ``out``; just ``row_limit`` as ``(R, 1)`` when ``col_limit`` is None (a
    diagonal block only serves its rows).

    One compare against the grid finds the entries that matter to their row or column
    (compares are the slow passes over a panel; the grid costs a fifth of one).
    """
    if col_limit is None:
        return row_limit.unsqueeze(1)
    return combine(row_limit.unsqueeze(1), col_limit.unsqueeze(0), out=out)


def _padded(size: int) -> int:
    """``size`` rounded up to a whole number of 8-byte words."""
    return -(-size // 8) * 8


def _true_positions(
    mask: torch.Tensor, mask_buf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, col)`` of the True entries of the 2-D ``mask``, a view at the start of the
    flat bool ``mask_buf`` (at least ``_padded(mask.numel())`` long); both ``(H,)`` int64,
    in row-major order.

    Hits are sparse, so the mask is first scanned as 8-byte words and only the words that
    hold a hit are scanned bytewise: several times faster than ``nonzero`` on the bytes.
    """
    padded = mask_buf[: _padded(mask.numel())]
    padded[mask.numel() :] = False
    words = torch.nonzero(padded.view(torch.int64)).flatten()
    word, byte = torch.nonzero(padded.view(-1, 8)[words]).unbind(1)
    flat = words[word] * 8 + byte
    return flat // mask.shape[1], flat % mask.shape[1]


def _schedule(
    blocks: list[tuple[int, int]], num_items: int, split: int, piece_entries: int
) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` pieces covering, for every row block, its diagonal block and all
    later items once. All diagonal blocks come first, so every row holds a full set of
    neighbours (a tight limit) before the panels; panel pieces hold at most
    ``piece_entries`` entries and never straddle ``split`` (the query/gallery boundary).
    """
    pieces = [(r0, r1, r0, r1) for r0, r1 in blocks]
    for r0, r1 in blocks:
        width = max(1, piece_entries // (r1 - r0))
        for start, stop in ((r1, max(r1, split)), (max(r1, split), num_items)):
            pieces.extend((r0, r1, c0, min(c0 + width, stop)) for c0 in range(start, stop, width))
    return pieces


def _exact_neighbours(
    features: torch.Tensor,
    sq_norms: torch.Tensor,
    blocks: list[tuple[int, int]],
    state: _RunningTopK,
    out: torch.Tensor,
    progress: bool,
) -> None:
    """Merge exact float32 distances of every row block in ``blocks`` (to itself and to all
    later items) into ``state``, and write the query x gallery distances into ``out``.

    Distances of the symmetric ``N x N`` matrix are computed once each: a block's diagonal
    block, then pieces of the panel with all later columns, which serve both its rows and
    (read column-wise) the later items' rows. Squared distances are
    ``(|a|^2 + |b|^2) - 2 a.b`` (``sq_norms`` from the pair kernel, so an item is at
    distance 0 from itself).
    """
    num_items, device = features.shape[0], features.device
    num_query = out.shape[0]
    widest = max((stop - start for start, stop in blocks), default=1)
    entries = max(_PIECE_ENTRIES, widest * widest)
    piece_buf = torch.empty(entries, device=device)
    mask_buf = torch.empty(_padded(entries), dtype=torch.bool, device=device)
    scratch_buf = torch.empty(entries, device=device)
    pieces = _schedule(blocks, num_items, num_query, _PIECE_ENTRIES)
    for r0, r1, c0, c1 in tqdm(pieces, desc="re-ranking: distances", disable=not progress):
        if r1 <= num_query <= c0:
            # Query rows x gallery columns are the output: compute them in place.
            dist = out[r0:r1, c0 - num_query : c1 - num_query]
        else:
            dist = piece_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.mm(features[r0:r1], features[c0:c1].T, out=dist)
        scratch = scratch_buf[: dist.numel()].view(dist.shape)
        torch.add(sq_norms[r0:r1].unsqueeze(1), sq_norms[c0:c1].unsqueeze(0), out=scratch)
        torch.add(scratch, dist, alpha=-2, out=dist).clamp_(min=0)
        if c0 == r0:
            dist.fill_diagonal_(0)
            state.merge_block(dist, r0, r0)
        else:
            state.merge_panel(dist, r0, c0, scratch, mask_buf)


# bfloat16 keeps 8 significant bits: an output rounded to nearest is within
# 2**-8 / (1 - 2**-8) of itself, relative.
_BF16_ROUNDING = 2.0**-8 / (1 - 2.0**-8)


def _gamma(n: int) -> float:
    """Relative error bound of an n-term float32 sum or dot product (Higham's gamma_n)."""
    return n * 2.0**-24 / (1 - n * 2.0**-24)


@dataclass(frozen=True)
class _ShiftedHalfDistances:
    """bfloat16 factors whose product is ``p_ij ~ d(i, j) / 2 - shift / 2``, with a
    rigorous interval for the exact distance.

    ``left[i] = [-a_i, h_i, l_i, 1, 1]`` and ``right[j] = [a_j, 1, 1, h_j, l_j]`` with
    ``h + l ~ (|a|^2 - shift / 2) / 2`` (two bfloat16 terms: 16 significant bits), so one
    bfloat16 matrix product gives the distance up to a constant, symmetric in ``i, j``.
    Any ``shift`` is rigorous; one near the distances that decide the candidates (a
    typical ``k``-th nearest one, ``_typical_near_distance``) keeps their ``|p|``, and
    with it the output rounding, small. For every pair, the exact float32 distance ``e``
    (``_pair_distances``) of row ``i`` satisfies
    ``|e - 2 p - shift| <= slack[i] + 2 * _BF16_ROUNDING * |p|``.
    """

    left: torch.Tensor  # (G, D + 4) bfloat16
    right: torch.Tensor  # (G, D + 4) bfloat16
    slack: torch.Tensor  # (G,) float64
    shift: float

    def lower(self, p: torch.Tensor) -> torch.Tensor:
        """Per-row lower bound of ``e`` for float64 ``p`` ``(G,)``, increasing in ``p``."""
        return 2 * p - 2 * _BF16_ROUNDING * p.abs() + self.shift - self.slack

    def upper(self, p: torch.Tensor) -> torch.Tensor:
        """Per-row upper bound of ``e`` for float64 ``p`` ``(G,)``, increasing in ``p``."""
        return 2 * p + 2 * _BF16_ROUNDING * p.abs() + self.shift + self.slack

    def largest_p_below(self, bound: torch.Tensor) -> torch.Tensor:
        """Per row, the largest ``p`` with ``lower(p) <= bound``, rounded up a little."""
        v = bound - self.shift + self.slack
        p = torch.where(v >= 0, v / (2 * (1 - _BF16_ROUNDING)), v / (2 * (1 + _BF16_ROUNDING)))
        return p + p.abs() * 2.0**-40

    def smallest_p_above(self, bound: torch.Tensor) -> torch.Tensor:
        """Per row, the smallest ``p`` with ``upper(p) >= bound``, rounded down a little."""
        v = bound - self.shift - self.slack
        p = torch.where(v >= 0, v / (2 * (1 + _BF16_ROUNDING)), v / (2 * (1 - _BF16_ROUNDING)))
        return p - p.abs() * 2.0**-40


def _typical_near_distance(features: torch.Tensor, sq_norms: torch.Tensor, k: int) -> float:
    """A rough, cheap estimate of a typical item's ``k``-th smallest squared distance
    (itself included), from a sample: for up to ``_SAMPLE_ROWS`` rows, the
    ``ceil(k C / G)``-th smallest distance to ``C <= _SAMPLE_COLS`` evenly spaced items
    (about the ``k``-th among all ``G``), and the median over the rows.
    """
    num_items = features.shape[0]
    rows = _evenly_spaced(num_items, _SAMPLE_ROWS, features.device)
    cols = _evenly_spaced(num_items, _SAMPLE_COLS, features.device)
    rank = min(cols.numel(), -(-k * cols.numel() // num_items))
    dist = torch.add(sq_norms[rows].unsqueeze(1), sq_norms[cols].unsqueeze(0))
    dist.addmm_(features[rows], features[cols].T, alpha=-2).clamp_(min=0)
    return float(dist.kthvalue(rank, dim=1).values.median())


def _evenly_spaced(num_items: int, count: int, device: torch.device) -> torch.Tensor:
    """``min(count, num_items)`` distinct indices spread evenly over ``range(num_items)``."""
    step = max(1, num_items // count)
    return torch.arange(0, num_items, step, device=device)[:count]


def _shifted_half_distances(
    features: torch.Tensor, sq_norms: torch.Tensor, shift: float
) -> _ShiftedHalfDistances:
    """Build the bfloat16 factors and error bound for ``features`` ``(G, D)`` and a
    ``shift`` in squared-distance units.

    The bound assumes the bfloat16 matrix product multiplies exactly and accumulates in
    float32 (true of the CPU kernels), then rounds its output to nearest bfloat16. With
    ``m >= max(|a|, |bf16(a)|)``, ``r >= |a - bf16(a)|`` and ``M``, ``R`` their maxima
    over all items, ``slack`` adds the inputs' rounding ``2 (m_i R + r_i M + r_i R)``
    (Cauchy-Schwarz), the float32 error of the exact distance and of the accumulation
    (``gamma``), and the two-term representation of ``h + l``.
    """
    num_items, dim = features.shape
    # Each factor carries half of the shift: p = |a_i|^2/2 + |a_j|^2/2 - a_i.a_j - shift/2.
    half_sq = (sq_norms.double() - shift / 2) / 2
    high = half_sq.to(torch.bfloat16)
    low = (half_sq - high.double()).to(torch.bfloat16)
    right = torch.empty(num_items, dim + 4, dtype=torch.bfloat16, device=features.device)
    right[:, :dim] = features
    right[:, dim : dim + 2] = 1
    right[:, dim + 2] = high
    right[:, dim + 3] = low
    left = torch.empty_like(right)
    torch.neg(right[:, :dim], out=left[:, :dim])
    left[:, dim] = high
    left[:, dim + 1] = low
    left[:, dim + 2 :] = 1

    # float32 norms are within gamma(dim) of the exact ones: inflate to bound them.
    inflate = (1 + 2 * _gamma(dim)) * (1 + 2.0**-20)
    norm = torch.empty(num_items, dtype=torch.float64, device=features.device)
    residual = torch.empty_like(norm)
    for start in range(0, num_items, _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        chunk = features[rows]
        norm[rows] = torch.linalg.vector_norm(chunk, dim=1).double() * inflate
        chunk = chunk - right[rows, :dim].float()  # exact: the bits bfloat16 dropped
        residual[rows] = torch.linalg.vector_norm(chunk, dim=1).double() * inflate
    big = norm + residual
    big_max, residual_max = big.max(), residual.max()
    rounding = 2 * (big * residual_max + residual * big_max + residual * residual_max)
    accumulation = 1.01 * _gamma(dim + 4)
    arithmetic = _gamma(dim) / 2 + 2.01 * 2.0**-24 + 2.0**-16 + accumulation
    slack = rounding + arithmetic * (big + big_max) ** 2 + 2 * (2.0**-16 + accumulation) * abs(
        shift
    )
    # The factor and the last term cover float64 rounding here and bfloat16 underflow.
    slack = slack * (1 + 2.0**-20) + 2.0**-100
    return _ShiftedHalfDistances(left=left, right=right, slack=slack, shift=shift)


# The key of bfloat16 -0 (+0's key is 0): both zeros equal any limit of 0, so limits
# that are zero take the key that includes both.
_NEGATIVE_ZERO_KEY = -1


def _keys_at_most(values: torch.Tensor) -> torch.Tensor:
    """Order keys that a bfloat16 ``p`` is at most exactly when ``p <= values`` (float64,
    NaN-free): the keys of the largest bfloat16 <= each value, with zero taken as +0."""
    keys = order_keys_(bfloat16_at_least(values.neg()).neg_().view(torch.int16))
    return torch.where(keys == _NEGATIVE_ZERO_KEY, 0, keys)


def _keys_at_least(values: torch.Tensor) -> torch.Tensor:
    """Order keys that a bfloat16 ``p`` is at least exactly when ``p >= values`` (float64,
    NaN-free): the keys of the smallest bfloat16 >= each value, with zero taken as -0."""
    keys = order_keys_(bfloat16_at_least(values).view(torch.int16))
    return torch.where(keys == 0, _NEGATIVE_ZERO_KEY, keys)


def _keys_to_float(keys: torch.Tensor) -> torch.Tensor:
    """float32 values of bfloat16 order keys (any shape); ``keys`` is left unchanged."""
    return order_keys_(keys.clone()).view(torch.bfloat16).float()


def _near_or_far_hits(
    keys: torch.Tensor,
    limits: tuple[torch.Tensor, torch.Tensor],
    rows: slice,
    cols: slice | None,
    grid_bufs: tuple[torch.Tensor, torch.Tensor],
    mask_buf: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local ``(row, col)`` of the keys of an ``(R, C)`` piece that may matter to its row
    item (``rows``) or, unless ``cols`` is None (a diagonal block), its column item: at
    most that item's near limit or at least its far limit.

    Args:
        keys: ``(R, C)`` int16 order keys of ``p``.
        limits: ``(near, far)``, each ``(G,)`` int16 keys per item.
        grid_bufs: two flat int16 buffers of at least ``R C`` entries.
        mask_buf: ``(2, >= _padded(R C))`` bool buffer.
    """
    near, far = limits
    size = keys.numel()
    near_grid, far_grid = (buf[:size].view(keys.shape) for buf in grid_bufs)
    near_cols, far_cols = (None, None) if cols is None else (near[cols], far[cols])
    near_limit = _limit_grid(near[rows], near_cols, torch.maximum, near_grid)
    far_limit = _limit_grid(far[rows], far_cols, torch.minimum, far_grid)
    mask = torch.le(keys, near_limit, out=mask_buf[0, :size].view(keys.shape))
    mask.logical_or_(torch.ge(keys, far_limit, out=mask_buf[1, :size].view(keys.shape)))
    return _true_positions(mask, mask_buf[0])


class _CandidateLog:
    """Logged ``(first, second, key)`` pairs, pruned by ``keep(first, second, key)`` (a
    bool mask) whenever it has doubled."""

    def __init__(
        self, keep: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        self.keep = keep
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.size = 0
        self.pruned_size = 0

    def add(self, first: torch.Tensor, second: torch.Tensor, key: torch.Tensor) -> None:
        self.parts.append((first, second, key))
        self.size += first.numel()
        if self.size > 2 * self.pruned_size + _PAIR_CHUNK:
            self.prune()

    def prune(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drop the pairs that no longer matter; return the kept ``(first, second, key)``."""
        columns = [torch.cat(column) for column in zip(*self.parts, strict=True)]
        kept = self.keep(*columns)
        self.parts = [tuple(column[kept] for column in columns)]
        self.size = self.pruned_size = int(kept.sum())
        return self.parts[0]


def _gallery_neighbours_bfloat16(
    features: torch.Tensor,
    sq_norms: torch.Tensor,
    num_query: int,
    state: _RunningTopK,
    chunk_size: int,
    progress: bool,
) -> None:
    """Merge the exact gallery x gallery distances that matter into ``state``.

    Every gallery pair gets a bfloat16 ``p`` (``_ShiftedHalfDistances``), i.e. an interval
    ``[lower(p), upper(p)]`` holding its exact float32 distance. In a row, an item can be
    among the ``state.size`` nearest only if its lower bound is at most the
    ``state.size``-th smallest upper bound, and can be the farthest only if its upper
    bound is at least the largest lower bound; both tests are monotone in ``p``, i.e.
    per-row limits on ``p``. Only the candidates, logged while the limits tighten panel
    by panel, get exact float32 distances (``_pair_distances``). Query columns are left
    to ``_exact_neighbours``: limits computed without them are looser, never wrong.
    Panels are scanned as int16 order keys (``order_keys_``); as every ``p`` is a
    bfloat16, comparing keys with those of the limits rounded inwards is exact.
    """
    gallery, gallery_sq = features[num_query:], sq_norms[num_query:]
    num_gallery, device = gallery.shape[0], features.device
    shift = _typical_near_distance(gallery, gallery_sq, state.size)
    bounds = _shifted_half_distances(gallery, gallery_sq, shift)
    # Approximate distances clamp(2 p + shift, 0): same order as p, and >= 0 as
    # _RunningTopK needs. Their float32 rounding is covered by the 2**-23 margins below.
    nearest = _RunningTopK(num_gallery, state.size, device)

    def approximate(p: torch.Tensor) -> torch.Tensor:
        return p.to(torch.float32, copy=True).mul_(2).add_(bounds.shift).clamp_(min=0)

    def margin(value: torch.Tensor) -> torch.Tensor:
        return 2.0**-23 * (value + 2 * abs(bounds.shift))

    def near_keys() -> torch.Tensor:
        """``(G,)`` per row: keys of the ``p`` that can be among the nearest."""
        kept = nearest.thresholds().double()
        largest_kept_p = (kept - bounds.shift) / 2 + margin(kept)
        return _keys_at_most(bounds.largest_p_below(bounds.upper(largest_kept_p)))

    def far_keys() -> torch.Tensor:
        """``(G,)`` per row: keys of the ``p`` that can be the farthest."""
        top = nearest.row_max.double()
        farthest_lower = bounds.lower((top - bounds.shift) / 2 - margin(top))
        # Every exact distance is >= 0, so a bound <= 0 rules nothing out.
        limit = bounds.smallest_p_above(farthest_lower)
        return _keys_at_least(torch.where((top > 0) & (farthest_lower > 0), limit, -torch.inf))

    def is_candidate(
        owner: torch.Tensor, key: torch.Tensor, near: torch.Tensor, far: torch.Tensor
    ) -> torch.Tensor:
        return (key <= near[owner]) | (key >= far[owner])

    def either_is_candidate(
        first: torch.Tensor, second: torch.Tensor, key: torch.Tensor
    ) -> torch.Tensor:
        near, far = near_keys(), far_keys()
        return is_candidate(first, key, near, far) | is_candidate(second, key, near, far)

    # Pairs (in either order) that may matter to either item, with the key of their p.
    log = _CandidateLog(either_is_candidate)
    blocks = _block_bounds(0, num_gallery, chunk_size)
    widest = max(stop - start for start, stop in blocks)
    entries = max(_PIECE_ENTRIES, widest * widest)
    piece_buf = torch.empty(entries, dtype=torch.bfloat16, device=device)
    near_buf, far_buf = torch.empty(2, entries, dtype=torch.int16, device=device)
    mask_buf = torch.empty(2, _padded(entries), dtype=torch.bool, device=device)
    pieces = _schedule(blocks, num_gallery, num_gallery, _PIECE_ENTRIES)
    for r0, r1, c0, c1 in tqdm(
        pieces, desc="re-ranking: distances (bfloat16)", disable=not progress
    ):
        shape, size = (r1 - r0, c1 - c0), (r1 - r0) * (c1 - c0)
        p = piece_buf[:size].view(shape)
        torch.mm(bounds.left[r0:r1], bounds.right[c0:c1].T, out=p)
        diagonal = c0 == r0
        if diagonal:
            nearest.merge_block(approximate(p), r0, r0)
        keys = order_keys_(p.view(torch.int16), near_buf[:size].view(shape))
        if not diagonal:
            for side, top in ((slice(r0, r1), keys.amax(dim=1)), (slice(c0, c1), keys.amax(0))):
                top_distance = approximate(_keys_to_float(top))
                torch.maximum(nearest.row_max[side], top_distance, out=nearest.row_max[side])
        kept = nearest.thresholds()
        near, far = near_keys(), far_keys()
        cols = None if diagonal else slice(c0, c1)
        i, j = _near_or_far_hits(
            keys, (near, far), slice(r0, r1), cols, (near_buf, far_buf), mask_buf
        )
        hit_keys = keys[i, j]
        i, j = i + r0, j + c0
        log.add(i, j, hit_keys)
        if not diagonal:
            # Hits that beat a row's approximate k-th value enter its running set.
            nearest.merge_symmetric(i, j, approximate(_keys_to_float(hit_keys)), kept)

    first, second, key = log.prune()
    near, far = near_keys(), far_keys()
    owner, other, key = torch.cat([first, second]), torch.cat([second, first]), key.repeat(2)
    matters = is_candidate(owner, key, near, far)
    directed = torch.unique(owner[matters] * num_gallery + other[matters])
    owner, other = directed // num_gallery, directed % num_gallery
    # Each unordered pair is computed once, so both of its items see the same distance.
    pair_keys, which = torch.unique(
        torch.minimum(owner, other) * num_gallery + torch.maximum(owner, other),
        return_inverse=True,
    )
    first, second = pair_keys // num_gallery + num_query, pair_keys % num_gallery + num_query
    exact = _pair_distances(features, sq_norms, first, second)
    state.merge_entries(owner + num_query, other + num_query, exact[which])


def _neighbour_table(
    features: torch.Tensor, sq_norms: torch.Tensor, state: _RunningTopK, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k neighbours of every item under the row-normalised distance, from ``state``.

    Returns:
        ``ranks`` ``(N, k)`` int64 item indices sorted by (normalised distance, index) --
        exactly ``argsort(original_dist, kind="stable")[:, :k]`` of the reference;
        ``rank_dists`` ``(N, k)`` float32, the matching normalised distances;
        ``row_max`` ``(N,)`` float32, the per-row maxima used for normalising.
    """
    # An all-identical input has zero rows; dividing by 1 keeps them 0 instead of NaN.
    row_max = torch.where(state.row_max > 0, state.row_max, torch.ones_like(state.row_max))
    normalised = state.values / row_max.unsqueeze(1)
    # Sorting by index first and then stably by value orders ties by index, as the
    # reference's stable argsort does.
    by_index, order = state.indices.sort(dim=1)
    by_value, order2 = normalised.gather(1, order).sort(dim=1, stable=True)
    ranks = by_index.gather(1, order2)[:, :k].contiguous()
    rank_dists = by_value[:, :k].contiguous()

    # One spare candidate certifies the k-th place: every item not kept has a raw distance
    # >= the largest kept one, so unless that largest one normalises to the same value as
    # the k-th, no unseen item can tie with (and, by index, overtake) the k-th.
    if state.size > k:
        ambiguous = torch.nonzero(normalised.amax(dim=1) == rank_dists[:, -1]).flatten()
        if ambiguous.numel():
            _rank_rows_exactly(features, sq_norms, row_max, ambiguous, ranks, rank_dists)
    return ranks, rank_dists, row_max


def _rank_rows_exactly(
    features: torch.Tensor,
    sq_norms: torch.Tensor,
    row_max: torch.Tensor,
    rows: torch.Tensor,
    ranks: torch.Tensor,
    rank_dists: torch.Tensor,
) -> None:
    """Recompute ``ranks``/``rank_dists`` for ``rows`` from full rows and a stable sort.

    Only reached when exact ties straddle the k-th place (e.g. duplicated embeddings).
    """
    k = ranks.shape[1]
    chunk = max(1, _FULL_ROW_ENTRIES // features.shape[0])
    for start in range(0, rows.numel(), chunk):
        sel = rows[start : start + chunk]
        dots = features[sel] @ features.T
        dist = torch.add(sq_norms[sel].unsqueeze(1), sq_norms.unsqueeze(0))
        dist.add_(dots, alpha=-2).clamp_(min=0)
        dist[torch.arange(sel.numel(), device=sel.device), sel] = 0
        dist.div_(row_max[sel].unsqueeze(1))
        vals, idx = dist.sort(dim=1, stable=True)
        ranks[sel] = idx[:, :k]
        rank_dists[sel] = vals[:, :k]


def _row_chunks(num_rows: int, size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, num_rows, size):
        yield torch.arange(start, min(start + size, num_rows), device=device)


def _reciprocal_mask(ranks: torch.Tensor) -> torch.Tensor:
    """``mask[i, a]`` is True iff ``i`` is among the neighbours of ``ranks[i, a]``.

    Args:
        ranks: ``(N, k)`` neighbour table.

    Returns:
        ``(N, k)`` bool.
    """
    mask = torch.empty(ranks.shape, dtype=torch.bool, device=ranks.device)
    for rows in _row_chunks(ranks.shape[0], _ROW_CHUNK, ranks.device):
        backward = ranks[ranks[rows]]  # (rows, k, k): neighbours of each neighbour
        mask[rows] = (backward == rows.view(-1, 1, 1)).any(dim=2)
    return mask


def _encode_neighbourhoods(
    features: torch.Tensor,
    sq_norms: torch.Tensor,
    row_max: torch.Tensor,
    ranks: torch.Tensor,
    rank_dists: torch.Tensor,
    k_full: int,
    k_half: int,
) -> _SparseRows:
    """Sparse ``V``: softmax-like weights over each item's expanded k-reciprocal set."""
    num_items, device = ranks.shape[0], ranks.device
    half = ranks[:, :k_half].contiguous()
    full_mask = _reciprocal_mask(ranks)
    half_mask = _reciprocal_mask(half)
    # Neighbour lists sorted by index, for membership tests and distance look-ups.
    sorted_ranks, order = ranks.sort(dim=1)
    sorted_dists = rank_dists.gather(1, order)

    counts_parts: list[torch.Tensor] = []
    col_parts: list[torch.Tensor] = []
    dist_parts: list[torch.Tensor] = []
    for rows in _row_chunks(num_items, _ROW_CHUNK, device):
        nbrs = ranks[rows]  # (c, k_full)
        is_recip = full_mask[rows]
        # R(i) with non-members replaced by num_items, sorted so it can be searched.
        recip = torch.where(is_recip, nbrs, num_items)
        recip_sorted = recip.sort(dim=1).values
        # R_half(c) for every candidate c: (c, k_full, k_half) indices and membership.
        cand_half = half[nbrs]
        cand_half_mask = half_mask[nbrs]
        flat = cand_half.flatten(1)
        pos = torch.searchsorted(recip_sorted, flat).clamp_(max=k_full - 1)
        in_recip = (recip_sorted.gather(1, pos) == flat).view_as(cand_half)
        overlap = (in_recip & cand_half_mask).sum(dim=2)
        size = cand_half_mask.sum(dim=2)
        # Same float64 comparison as the reference's ``len(...) > 2./3 * len(...)``.
        accept = is_recip & (overlap.double() > 2.0 / 3.0 * size.double())
        added = torch.where(accept.unsqueeze(2) & cand_half_mask, cand_half, num_items)
        members = torch.cat([recip, added.flatten(1)], dim=1).sort(dim=1).values
        keep = members < num_items
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]

        # Distances: from the top-k table where possible, recomputed otherwise.
        pos = torch.searchsorted(sorted_ranks[rows], members).clamp_(max=k_full - 1)
        known = sorted_ranks[rows].gather(1, pos) == members
        dist = sorted_dists[rows].gather(1, pos)
        owner = rows.unsqueeze(1).expand_as(members)
        missing = keep & ~known
        if bool(missing.any()):
            pair_owner = owner[missing]
            dist[missing] = _pair_distances(
                features, sq_norms, pair_owner, members[missing]
            ) / row_max[pair_owner]
        counts_parts.append(keep.sum(dim=1))
        col_parts.append(members[keep])
        dist_parts.append(dist[keep])

    counts = torch.cat(counts_parts)
    ptr = torch.zeros(num_items + 1, dtype=torch.long, device=device)
    torch.cumsum(counts, dim=0, out=ptr[1:])
    col = torch.cat(col_parts)
    weight = torch.exp(-torch.cat(dist_parts))
    rows_of = torch.arange(num_items, device=device).repeat_interleave(counts)
    total = torch.zeros(num_items, device=device).index_add_(0, rows_of, weight)
    return _SparseRows(ptr=ptr, col=col, val=weight / total[rows_of])


def _pair_distances(
    features: torch.Tensor, sq_norms: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Squared distances of the ``(rows[p], cols[p])`` pairs, shape ``(P,)`` float32; an item
    is at distance 0 from itself."""
    dist = (sq_norms[rows] + sq_norms[cols]).add_(_pair_dots(features, rows, cols), alpha=-2)
    return dist.clamp_(min=0).masked_fill_(rows == cols, 0)


def _pair_dots(features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``features[rows[p]] . features[cols[p]]`` for every pair, shape ``(P,)`` float32.

    A sampled matrix product (``torch.sparse.sampled_addmm``) reads each row in place,
    several times faster than gathering the rows; every pair is one dot product of the
    same kernel, so equal pairs get equal results wherever they occur.
    """
    num_items = features.shape[0]
    out = torch.empty(rows.numel(), device=features.device)
    for start in range(0, rows.numel(), _PAIR_CHUNK):
        r = rows[start : start + _PAIR_CHUNK]
        c = cols[start : start + _PAIR_CHUNK]
        order = torch.argsort(r * num_items + c)
        crow = torch.zeros(num_items + 1, dtype=torch.long, device=features.device)
        torch.cumsum(torch.bincount(r, minlength=num_items), dim=0, out=crow[1:])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(
                crow, c[order], torch.zeros(r.numel(), device=features.device),
                size=(num_items, num_items), check_invariants=False,
            )
        dots = torch.sparse.sampled_addmm(pattern, features, features.T, beta=0.0).values()
        out[start + order] = dots
    return out


def _expand_queries(weights: _SparseRows, neighbours: torch.Tensor) -> _SparseRows:
    """Local query expansion: row ``i`` becomes the mean of rows ``neighbours[i, :]``.

    Args:
        weights: sparse ``V`` with ``N`` rows.
        neighbours: ``(N, k2)`` rows to average for each row.
    """
    num_items, k2 = neighbours.shape
    device = neighbours.device
    counts = weights.ptr[1:] - weights.ptr[:-1]
    count_parts: list[torch.Tensor] = []
    col_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    for rows in _row_chunks(num_items, _ROW_CHUNK, device):
        sources = neighbours[rows].flatten()
        segment, entry = _expand_segments(weights.ptr[sources], counts[sources])
        owner = rows[0] + segment // k2
        # Keys sort by (owner, column); the per-key sum adds the k2 rows in rank order like
        # the reference's dense mean.
        keys = owner * num_items + weights.col[entry]
        unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        sums = torch.zeros(unique_keys.numel(), device=device)
        sums.index_add_(0, inverse, weights.val[entry])
        count_parts.append(torch.bincount(unique_keys // num_items - rows[0], minlength=len(rows)))
        col_parts.append(unique_keys % num_items)
        val_parts.append(sums / k2)
    ptr = torch.zeros(num_items + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.cat(count_parts), dim=0, out=ptr[1:])
    return _SparseRows(ptr=ptr, col=torch.cat(col_parts), val=torch.cat(val_parts))


def _expand_segments(
    starts: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Enumerate the positions ``starts[s] .. starts[s] + lengths[s] - 1`` of all segments.

    Returns:
        ``(segment, position)``, both ``(lengths.sum(),)`` int64: for every enumerated
        position, the segment it belongs to and the position itself.
    """
    segment = torch.repeat_interleave(lengths)
    shift = starts - (torch.cumsum(lengths, dim=0) - lengths)
    return segment, torch.arange(segment.numel(), device=lengths.device) + shift[segment]


def _mix_jaccard(
    out: torch.Tensor,
    weights: _SparseRows,
    row_max: torch.Tensor,
    num_query: int,
    lambda_value: float,
    chunk_size: int,
    progress: bool,
) -> None:
    """Turn raw query x gallery distances in ``out`` into the final re-ranked distances.

    ``S[i, j] = sum_k min(V[i, k], V[j, k])`` is accumulated only where both rows are
    non-zero, by joining each query entry ``(i, k)`` with the gallery entries of column
    ``k`` (an inverted index); Jaccard distance is ``1 - S / (2 - S)``.
    """
    device = out.device
    num_gallery = out.shape[1]
    num_items = num_query + num_gallery

    # Inverted index over the gallery rows: for column k, the gallery rows j with
    # V[j, k] != 0, in increasing j (stable sort keeps the row order of the CSR).
    start = int(weights.ptr[num_query])
    row_ids = weights.row_ids()
    g_rows = row_ids[start:] - num_query
    g_cols = weights.col[start:]
    by_col = torch.sort(g_cols, stable=True).indices
    inv_rows, inv_vals = g_rows[by_col], weights.val[start:][by_col]
    inv_counts = torch.bincount(g_cols, minlength=num_items)
    inv_ptr = torch.cumsum(inv_counts, dim=0) - inv_counts

    q_ptr = weights.ptr[: num_query + 1]
    q_cols = weights.col[:start]
    q_vals = weights.val[:start]
    pair_counts = inv_counts[q_cols]
    # Pairs produced by each query, to cut query chunks that respect the pair budget.
    per_query = torch.zeros(num_query, dtype=torch.long, device=device)
    per_query.index_add_(0, row_ids[:start], pair_counts)
    chunks = _budget_chunks(per_query.cpu(), _PAIR_BUDGET, chunk_size)

    rows_per_chunk = max(q1 - q0 for q0, q1 in chunks)
    similarity_buf = torch.empty(rows_per_chunk * num_gallery, device=device)
    # Reused for 2 - S: a fresh temporary of this size costs page faults on every chunk.
    denominator_buf = torch.empty_like(similarity_buf)
    two = torch.tensor(2.0, device=device)
    for q0, q1 in tqdm(chunks, desc="re-ranking: jaccard", disable=not progress):
        e0, e1 = int(q_ptr[q0]), int(q_ptr[q1])
        # One pair per (query entry (i, k), gallery entry (j, k)) sharing column k.
        source, entry = _expand_segments(inv_ptr[q_cols[e0:e1]], pair_counts[e0:e1])
        flat = ((row_ids[e0:e1] - q0) * num_gallery)[source] + inv_rows[entry]
        similarity = similarity_buf[: (q1 - q0) * num_gallery]
        similarity.zero_()
        similarity.index_add_(0, flat, torch.minimum(q_vals[e0:e1][source], inv_vals[entry]))
        similarity = similarity.view(q1 - q0, num_gallery)

        # The reference's float32 values, (1 - S / (2 - S)) * (1 - lambda) +
        # (d / row_max) * lambda, in fewer passes: (x - 1) * (lambda - 1) rounds exactly
        # like (1 - x) * (1 - lambda), as negation is exact.
        denominator = denominator_buf[: similarity.numel()].view_as(similarity)
        similarity.div_(torch.sub(two, similarity, out=denominator))
        similarity.sub_(1).mul_(lambda_value - 1)
        block = out[q0:q1]
        block.div_(row_max[q0:q1].unsqueeze(1)).mul_(lambda_value).add_(similarity)


def _budget_chunks(per_row: torch.Tensor, budget: int, max_rows: int) -> list[tuple[int, int]]:
    """Split rows into consecutive ranges of at most ``max_rows`` rows whose summed cost
    stays within ``budget`` (a single row over budget gets a range of its own)."""
    cumulative = torch.cumsum(per_row, dim=0)
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < per_row.numel():
        spent = int(cumulative[start - 1]) if start else 0
        stop = int(torch.searchsorted(cumulative, spent + budget, right=True))
        stop = min(max(stop, start + 1), start + max_rows)
        chunks.append((start, stop))
        start = stop
    return chunks
