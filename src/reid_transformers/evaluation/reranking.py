"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised and memory-bounded.

This computes the same re-ranked distance as the authors' widely used numpy
``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` but never builds an
``N x N`` matrix (``N = num_query + num_gallery``):

* distances are computed once per pair of the symmetric ``N x N`` matrix (diagonal blocks,
  then for every block of rows a panel with all later columns, read both row- and
  column-wise), so only half of the ``N x N x D`` matrix product is done, and only a
  running top-``(k1 + 2)`` per row, the row maxima and the query x gallery part survive;
* the k-reciprocal sets, their expansion and the weights ``V`` are computed for all items at
  once with gathers and sorted searches over the ``(N, k1 + 1)`` neighbour table;
* ``V`` and its local query expansion are kept as sparse rows (CSR), and the Jaccard term is
  a sparse join through an inverted index over ``V``'s columns, accumulated with
  ``index_add_`` into one query chunk at a time.

See ``docs/reranking.md`` for the algorithm, the exactness argument and measured numbers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .ranking import DISTANCE_METRICS as _METRICS
from .ranking import reject_zero_vectors

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
# Pairs per step when a distance outside the top-(k1 + 1) table is recomputed (two gathered
# (pairs, D) float32 matrices; small for the same reason).
_PAIR_DIST_CHUNK = 1024
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
    metric: Metric = "euclidean",
    chunk_size: int | None = None,
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
            chunk; ``None`` uses 2048. Working memory beyond the inputs and the output is at
            most about ``9 * chunk_size * N`` bytes (0.36 GB at Market-1501 scale with the
            default, usually much less) plus a few tens of MB of neighbour tables and
            sparse encodings. The result does not depend on it.
        progress: Show tqdm progress bars.

    Returns:
        ``(Q, G)`` float32 tensor of re-ranked distances (smaller = more similar), on the
        input device. Values lie in ``[0, 1]``.

    Raises:
        TypeError: an embedding argument is not a tensor/array of real numbers.
        ValueError: wrong shapes, empty inputs, non-finite or (for cosine) zero-norm
            embeddings, or a parameter outside its range.
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

    num_query = query.shape[0]
    features = _prepare_features(torch.cat([query, gallery]), metric)
    num_items = features.shape[0]

    # The reference slices ``initial_rank[i, :k + 1]``, which silently shortens when there
    # are fewer than k + 1 items; clamping reproduces that.
    k_full = min(k1 + 1, num_items)
    k_half = min(int(round(k1 / 2)) + 1, num_items)
    k_expand = min(k2, num_items)

    bounds = _block_bounds(num_query, num_items, chunk_size)
    out = torch.empty(num_query, num_items - num_query, device=features.device)
    ranks, rank_dists, row_max, sq_norms = _nearest_neighbours(
        features, bounds, num_query, k_full, out, progress
    )
    weights = _encode_neighbourhoods(features, sq_norms, row_max, ranks, rank_dists, k_full, k_half)
    if k2 != 1:
        weights = _expand_queries(weights, ranks[:, :k_expand])
    _mix_jaccard(out, weights, row_max, num_query, float(lambda_value), chunk_size, progress)
    return out


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
    if not bool(torch.isfinite(tensor).all()):
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
    """Per-row set of the ``size`` smallest distances seen so far (ties kept arbitrarily).

    Invariant used for certification: every distance not kept is >= the largest kept one.
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

    def merge_entries(self, owner: torch.Tensor, other: torch.Tensor, value: torch.Tensor) -> None:
        """Merge scattered distances ``value[e] >= 0`` from item ``owner[e]`` to ``other[e]``.

        Rows are touched only if they own an entry, and the cost does not depend on how
        unevenly entries spread over rows: kept and new entries of those rows are sorted
        by (row, distance) and the first ``size`` of every row are kept.
        """
        if owner.numel() == 0:
            return
        per_row = torch.bincount(owner, minlength=self.values.shape[0])
        rows = torch.nonzero(per_row).flatten()
        all_owner = torch.cat([rows.repeat_interleave(self.size), owner])
        all_value = torch.cat([self.values[rows].flatten(), value])
        all_other = torch.cat([self.indices[rows].flatten(), other])
        # Non-negative float32 values (+inf included) order like their bit patterns read
        # as integers, so one int64 key sorts by (row, distance).
        bits = all_value.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        order = torch.argsort((all_owner << 32) | bits)
        # Rows appear in ascending order, each with its ``size`` kept entries plus its new
        # ones; the first ``size`` of each group are its new smallest distances.
        group = per_row[rows] + self.size
        group_start = torch.cumsum(group, dim=0) - group
        take = order[group_start.unsqueeze(1) + torch.arange(self.size, device=owner.device)]
        self.values[rows] = all_value[take]
        self.indices[rows] = all_other[take]

    def thresholds(self) -> torch.Tensor:
        """``(num_rows,)`` largest kept distance per row; +inf while a row is not full."""
        return self.values.amax(dim=1)


def _nearest_neighbours(
    features: torch.Tensor,
    bounds: list[tuple[int, int]],
    num_query: int,
    k: int,
    out: torch.Tensor,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k neighbours of every item under the row-normalised distance.

    Distances of the symmetric ``N x N`` matrix are computed once each: first the diagonal
    blocks, then for every block of rows a panel with all later columns, which serves both
    its rows and (read column-wise) the later items' rows.

    Squared distances are ``(|a|^2 + |b|^2) - 2 a.b`` with ``|a|^2`` taken from the diagonal
    of the same kind of matrix product as ``a.b``: the formula is symmetric in rounding, and
    identical embeddings get distance 0 (and equal distances to everything else) whenever
    the matrix product rounds their dot products identically, which it usually but not
    provably does.

    Writes the raw (not yet row-normalised) query x gallery distances into ``out``.

    Returns:
        ``ranks`` ``(N, k)`` int64 item indices sorted by (normalised distance, index) --
        exactly ``argsort(original_dist, kind="stable")[:, :k]`` of the reference;
        ``rank_dists`` ``(N, k)`` float32, the matching normalised distances;
        ``row_max`` ``(N,)`` float32, the per-row maxima used for normalising;
        ``sq_norms`` ``(N,)`` float32 squared norms used in the distances.
    """
    num_items, device = features.shape[0], features.device
    # One spare candidate certifies the k-th place: every item not kept has a raw distance
    # >= the largest kept one, so unless that largest one normalises to the same value as
    # the k-th, no unseen item can tie with (and, by index, overtake) the k-th.
    state = _RunningTopK(num_items, min(k + 1, num_items), device)
    widest = max(stop - start for start, stop in bounds)
    panel_buf = torch.empty(widest * max(widest, num_items - bounds[0][1]), device=device)
    mask_buf = torch.empty(panel_buf.numel(), dtype=torch.bool, device=device)
    scratch_buf = torch.empty(widest * widest, device=device)
    sq_norms = torch.empty(num_items, device=device)

    def squared_distances(rows: tuple[int, int], cols: tuple[int, int], dots: torch.Tensor) -> None:
        """Turn ``dots`` (rows x cols dot products) into clamped squared distances."""
        scratch = scratch_buf[: dots.numel()].view(dots.shape)
        torch.add(
            sq_norms[rows[0] : rows[1]].unsqueeze(1),
            sq_norms[cols[0] : cols[1]].unsqueeze(0),
            out=scratch,
        )
        torch.add(scratch, dots, alpha=-2, out=dots).clamp_(min=0)

    steps = tqdm(total=2 * len(bounds) - 1, desc="re-ranking: distances", disable=not progress)
    for r0, r1 in bounds:
        dots = panel_buf[: (r1 - r0) ** 2].view(r1 - r0, r1 - r0)
        torch.mm(features[r0:r1], features[r0:r1].T, out=dots)
        sq_norms[r0:r1] = dots.diagonal()
        squared_distances((r0, r1), (r0, r1), dots)
        state.merge_block(dots, r0, r0)
        steps.update()

    for r0, r1 in bounds[:-1]:
        width = num_items - r1
        panel = panel_buf[: (r1 - r0) * width].view(r1 - r0, width)
        torch.mm(features[r0:r1], features[r1:].T, out=panel)
        for c0, c1 in bounds:
            if c0 >= r1:
                squared_distances((r0, r1), (c0, c1), panel[:, c0 - r1 : c1 - r1])
        rows_max = state.row_max[r0:r1]
        torch.maximum(rows_max, panel.amax(dim=1), out=rows_max)
        cols_max = state.row_max[r1:]
        torch.maximum(cols_max, panel.amax(dim=0), out=cols_max)

        # Only distances below a row's current worst kept one can enter its set; after the
        # diagonal blocks that is a small fraction, so compare + nonzero replace a top-k.
        threshold = state.thresholds()
        mask = mask_buf[: panel.numel()].view(panel.shape)
        row_hits = torch.nonzero(torch.lt(panel, threshold[r0:r1].unsqueeze(1), out=mask))
        col_hits = torch.nonzero(torch.lt(panel, threshold[r1:].unsqueeze(0), out=mask))
        hits = torch.cat([row_hits, col_hits])
        state.merge_entries(
            owner=torch.cat([row_hits[:, 0] + r0, col_hits[:, 1] + r1]),
            other=torch.cat([row_hits[:, 1] + r1, col_hits[:, 0] + r0]),
            value=panel[hits[:, 0], hits[:, 1]],
        )
        if r1 <= num_query:
            out[r0:r1] = panel[:, num_query - r1 :]
        steps.update()
    steps.close()

    # An all-identical input has zero rows; dividing by 1 keeps them 0 instead of NaN.
    row_max = torch.where(state.row_max > 0, state.row_max, torch.ones_like(state.row_max))
    normalised = state.values / row_max.unsqueeze(1)
    # Sorting by index first and then stably by value orders ties by index, as the
    # reference's stable argsort does.
    by_index, order = state.indices.sort(dim=1)
    by_value, order2 = normalised.gather(1, order).sort(dim=1, stable=True)
    ranks = by_index.gather(1, order2)[:, :k].contiguous()
    rank_dists = by_value[:, :k].contiguous()

    if state.size > k:
        ambiguous = torch.nonzero(normalised.amax(dim=1) == rank_dists[:, -1]).flatten()
        if ambiguous.numel():
            _rank_rows_exactly(features, sq_norms, row_max, ambiguous, ranks, rank_dists)
    return ranks, rank_dists, row_max, sq_norms


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
            dist[missing] = _pair_distances(
                features, sq_norms, row_max, owner[missing], members[missing]
            )
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
    features: torch.Tensor,
    sq_norms: torch.Tensor,
    row_max: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Row-normalised distance for arbitrary ``(rows[p], cols[p])`` pairs, shape ``(P,)``."""
    out = torch.empty(rows.numel(), device=features.device)
    for start in range(0, rows.numel(), _PAIR_DIST_CHUNK):
        r = rows[start : start + _PAIR_DIST_CHUNK]
        c = cols[start : start + _PAIR_DIST_CHUNK]
        dots = torch.linalg.vecdot(features[r], features[c])
        dist = (sq_norms[r] + sq_norms[c]).add_(dots, alpha=-2).clamp_(min=0)
        out[start : start + r.numel()] = torch.where(r == c, 0.0, dist) / row_max[r]
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
    for q0, q1 in tqdm(chunks, desc="re-ranking: jaccard", disable=not progress):
        e0, e1 = int(q_ptr[q0]), int(q_ptr[q1])
        # One pair per (query entry (i, k), gallery entry (j, k)) sharing column k.
        source, entry = _expand_segments(inv_ptr[q_cols[e0:e1]], pair_counts[e0:e1])
        flat = ((row_ids[e0:e1] - q0) * num_gallery)[source] + inv_rows[entry]
        similarity = similarity_buf[: (q1 - q0) * num_gallery]
        similarity.zero_()
        similarity.index_add_(0, flat, torch.minimum(q_vals[e0:e1][source], inv_vals[entry]))
        similarity = similarity.view(q1 - q0, num_gallery)

        # Same float32 operations as the reference:
        # (1 - S / (2 - S)) * (1 - lambda) + (d / row_max) * lambda, done in place.
        similarity.div_(similarity.neg().add_(2)).neg_().add_(1).mul_(1 - lambda_value)
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
