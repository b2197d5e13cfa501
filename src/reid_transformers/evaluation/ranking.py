"""Retrieval metrics under the Market-1501 protocol: CMC, mAP and mINP.

For each query the gallery items with the same identity *and* the same camera are removed
(as are gallery items with the junk identity ``-1``); the remaining items with the query's
identity are its positives, everything else (distractors ``0`` included) is a negative. A
query with no positive left is skipped and counted in ``num_skipped_queries``.

The gallery is ordered by ascending distance with ties broken by gallery index (a stable
sort), and

- CMC rank-k is the fraction of valid queries whose first positive sits at rank <= k;
- AP is the non-interpolated average precision over all positives; mAP its mean;
- INP is ``num_positives / rank_of_the_hardest_positive``; mINP its mean.

Every metric is a function of the *ranks of the positives* alone, so the gallery is never
fully sorted: for each query only the items no farther than its hardest positive are
selected and ordered. With useful embeddings that is a few hundred items out of thousands
(1.4 M of Market-1501's 54 M pairs for an mAP-0.7 model), which is what makes this fast;
with useless ones it degrades gracefully to a full sort of that query's row. Queries are
processed in chunks so memory stays bounded for any gallery size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[int] | Sequence[float]

DISTANCE_METRICS = ("euclidean", "cosine")

# Elements of one (query chunk x gallery) distance block: 2**23 float32 = 32 MiB.
_CHUNK_ELEMENTS = 1 << 23
# Zero-vector rows an error lists before "...".
_MAX_LISTED_ROWS = 10


def reject_zero_vectors(norms: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise if a row norm is zero: the package's one rule for cosine distance.

    A zero vector has no direction, so its cosine similarity to anything is undefined;
    normalising it would give a zero row at distance 1 from everything, and it would land
    at an arbitrary place in every ranking. Ranking refuses such rows with this message,
    in the same words as the gallery index (re-ranking refuses them too).

    Args:
        norms: ``(N,)`` L2 norms of the rows of the embeddings called ``name``.
        name: how the error names the embeddings, e.g. ``"query_embeddings"``.

    Raises:
        ValueError: naming ``name`` and the first ten zero rows.
    """
    zero = norms == 0
    if not bool(zero.any()):
        return
    rows = (
        torch.nonzero(zero).flatten() if isinstance(zero, torch.Tensor) else np.flatnonzero(zero)
    )
    more = " ..." if len(rows) > _MAX_LISTED_ROWS else ""
    raise ValueError(
        f"{name} rows {rows[:_MAX_LISTED_ROWS].tolist()}{more} are zero vectors; cosine "
        "similarity is undefined for them (drop those rows or use metric='euclidean')"
    )


@dataclass
class RankingResult:
    """Retrieval metrics of one query/gallery evaluation.

    Attributes:
        cmc: ``(max_rank,)`` cumulative match characteristic; ``cmc[k - 1]`` is rank-k
            accuracy in [0, 1].
        mean_ap: mean average precision in [0, 1].
        mean_inp: mean inverse negative penalty in [0, 1].
        num_valid_queries: queries with at least one positive in the gallery.
        num_skipped_queries: queries without one (excluded from every mean).
        average_precision: ``(num_queries,)`` per-query AP, NaN for skipped queries; only
            filled when requested.
    """

    cmc: np.ndarray
    mean_ap: float
    mean_inp: float
    num_valid_queries: int
    num_skipped_queries: int
    average_precision: np.ndarray | None = field(default=None, repr=False)

    def rank(self, k: int) -> float:
        """Rank-k accuracy in [0, 1] (``k`` is 1-based; beyond ``max_rank`` it is clipped)."""
        if k < 1:
            raise ValueError(f"rank k must be >= 1, got {k}")
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def as_dict(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float | int]:
        """Flat dictionary of the headline numbers (fractions in [0, 1], counts as ints)."""
        out: dict[str, float | int] = {"mAP": self.mean_ap, "mINP": self.mean_inp}
        for k in ranks:
            out[f"rank-{k}"] = self.rank(k)
        out["num_valid_queries"] = self.num_valid_queries
        out["num_skipped_queries"] = self.num_skipped_queries
        return out


def _as_float_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (num_items, dim), got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


def _as_label_tensor(x: ArrayLike, name: str, expected_len: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x))
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    if len(t) != expected_len:
        raise ValueError(f"{name} has {len(t)} entries but {expected_len} were expected")
    return t.to(torch.int64)


def pairwise_distance(
    query: ArrayLike, gallery: ArrayLike, metric: str = "euclidean"
) -> torch.Tensor:
    """Distance matrix between two sets of embeddings.

    Args:
        query: ``(Q, D)`` embeddings.
        gallery: ``(G, D)`` embeddings.
        metric: ``"euclidean"`` (L2 distance) or ``"cosine"`` (``1 - cosine similarity``,
            in [0, 2]).

    Returns:
        ``(Q, G)`` float32 tensor; smaller means more similar.

    Raises:
        ValueError: mismatched dimensions, an unknown ``metric``, or (cosine) zero vectors
            (see :func:`reject_zero_vectors`).
    """
    q = _as_float_tensor(query, "query")
    g = _as_float_tensor(gallery, "gallery")
    _check_dims(q, g)
    gallery_side = _GallerySide(g, metric)
    _check_query_norms(q, metric)
    return gallery_side.distances(q, squared=False)


def _check_dims(q: torch.Tensor, g: torch.Tensor) -> None:
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query and gallery embeddings differ in dimension: {q.shape[1]} vs {g.shape[1]}"
        )


def _check_query_norms(query: torch.Tensor, metric: str) -> None:
    """Apply :func:`reject_zero_vectors` to all queries at once, so rows are numbered
    globally (queries are normalised later, one chunk at a time)."""
    if metric == "cosine":
        reject_zero_vectors(torch.linalg.vector_norm(query, dim=1), "query_embeddings")


class _GallerySide:
    """Gallery embeddings prepared once (normalised or squared norms) for blocks of queries."""

    def __init__(self, gallery: torch.Tensor, metric: str) -> None:
        if metric not in DISTANCE_METRICS:
            raise ValueError(f"metric must be one of {DISTANCE_METRICS}, got {metric!r}")
        self.metric = metric
        if metric == "cosine":
            norms = torch.linalg.vector_norm(gallery, dim=1, keepdim=True)
            reject_zero_vectors(norms.squeeze(1), "gallery_embeddings")
            self.gallery = gallery / norms
        else:
            self.gallery = gallery
            self.sq_norm = gallery.pow(2).sum(1)

    def distances(self, query: torch.Tensor, squared: bool) -> torch.Tensor:
        """``(C, G)`` distances of a block of queries; ``squared`` applies to Euclidean."""
        if self.metric == "cosine":
            qn = torch.nn.functional.normalize(query, dim=1)
            return torch.addmm(torch.ones((), dtype=query.dtype), qn, self.gallery.T, alpha=-1.0)
        dist = torch.addmm(self.sq_norm.unsqueeze(0), query, self.gallery.T, alpha=-2.0)
        dist.add_(query.pow(2).sum(1, keepdim=True)).clamp_(min=0)
        return dist if squared else dist.sqrt_()


class _PositiveLookup:
    """For each query, the gallery items that share its identity, as a padded index matrix.

    Gallery items are grouped by identity once (one sort), so a chunk of queries finds its
    same-identity items without comparing every query with every gallery label.
    """

    def __init__(self, gallery_pids: torch.Tensor) -> None:
        self.order = torch.argsort(gallery_pids, stable=True)
        self.sorted_pids = gallery_pids[self.order]

    def same_identity(self, query_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(index, mask)``, both ``(C, M)``: gallery indices with the query's pid."""
        start = torch.searchsorted(self.sorted_pids, query_pids, side="left")
        count = torch.searchsorted(self.sorted_pids, query_pids, side="right") - start
        width = max(int(count.max()) if len(count) else 0, 1)
        offsets = torch.arange(width)
        mask = offsets.unsqueeze(0) < count.unsqueeze(1)
        slot = (start.unsqueeze(1) + offsets).clamp_(max=max(len(self.order) - 1, 0))
        return self.order[slot], mask


def _order_preserving_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2**32) with the same order; equal floats (0.0, -0.0) equal."""
    bits = (values + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
    # Non-negative floats order like their bit patterns; negative ones in reverse.
    return torch.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - (bits & 0x7FFFFFFF))


def _rank_chunk(
    dist: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
    lookup: _PositiveLookup,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metrics for one chunk of queries, ``dist`` being ``(C, G)``.

    Returns ``(first_rank, ap, inp)``, each ``(C,)``; skipped queries have ``first_rank``
    0 and NaN AP / INP. Ranks are 1-based among the query's *valid* gallery items.
    """
    num_queries = len(dist)
    same_id, in_group = lookup.same_identity(q_pids)  # (C, M)
    positive = (
        in_group
        & (g_camids[same_id] != q_camids.unsqueeze(1))
        & (g_pids[same_id] != -1)
    )
    num_pos = positive.sum(1)
    hardest = dist.gather(1, same_id).masked_fill_(~positive, float("-inf")).amax(1)
    # Items no farther than the hardest positive hold every positive and everything ranked
    # above one; removed items (same camera, junk) among them are skipped when counting.
    rows, cols = (dist <= hardest.unsqueeze(1)).nonzero(as_tuple=True)  # row-major
    # Order by (query, distance, gallery index) with one stable integer sort (radix-fast):
    # cols already ascend within a row, and the key packs the row above the distance bits.
    order = ((rows << 32) | _order_preserving_bits(dist[rows, cols])).sort(stable=True)[1]
    rows, cols = rows[order], cols[order]

    hit_pid = g_pids[cols] == q_pids[rows]
    is_valid = ~(hit_pid & (g_camids[cols] == q_camids[rows])) & (g_pids[cols] != -1)
    is_pos = hit_pid & is_valid
    # Segmented cumulative sums: the global cumsum minus its value before each row starts.
    seg_start = torch.zeros(num_queries + 1, dtype=torch.int64)
    seg_start[1:] = torch.bincount(rows, minlength=num_queries).cumsum(0)
    valid_cum = torch.cat([torch.zeros(1, dtype=torch.int64), is_valid.cumsum(0)])
    pos_cum = torch.cat([torch.zeros(1, dtype=torch.int64), is_pos.cumsum(0)])
    rank = valid_cum[1:] - valid_cum[seg_start[rows]]  # 1-based rank among valid items
    hits = pos_cum[1:] - pos_cum[seg_start[rows]]

    pos_rows, pos_rank = rows[is_pos], rank[is_pos]
    precision = hits[is_pos].double() / pos_rank
    num_pos_f = num_pos.double()
    ap = torch.zeros(num_queries, dtype=torch.float64).index_add_(0, pos_rows, precision)
    ap = ap / num_pos_f  # NaN (0/0) for queries without positives
    first_rank = torch.zeros(num_queries, dtype=torch.int64).scatter_reduce_(
        0, pos_rows, pos_rank, reduce="amin", include_self=False
    )
    last_rank = torch.zeros(num_queries, dtype=torch.int64).scatter_reduce_(
        0, pos_rows, pos_rank, reduce="amax", include_self=False
    )
    inp = num_pos_f / last_rank  # NaN for queries without positives
    return first_rank, ap, inp


def _evaluate(
    distance_chunks: Iterator[tuple[int, torch.Tensor]],
    q_pids: torch.Tensor,
    g_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_camids: torch.Tensor,
    max_rank: int,
    return_per_query: bool,
) -> RankingResult:
    num_gallery = len(g_pids)
    max_rank = min(max_rank, num_gallery)
    lookup = _PositiveLookup(g_pids)
    results = [
        _rank_chunk(dist, q_pids[s : s + len(dist)], q_camids[s : s + len(dist)], g_pids,
                    g_camids, lookup)
        for s, dist in distance_chunks
    ]
    first_rank, ap, inp = (torch.cat(parts) for parts in zip(*results, strict=True))

    valid = first_rank > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a positive in the gallery (same identity, other camera): check "
            "that query and gallery pids/camids refer to the same identities"
        )
    ranks = first_rank[valid].clamp(max=max_rank + 1) - 1
    counts = torch.bincount(ranks, minlength=max_rank + 1)
    cmc = (counts[:max_rank].cumsum(0).double() / num_valid).numpy()
    return RankingResult(
        cmc=cmc,
        mean_ap=float(ap[valid].mean()),
        mean_inp=float(inp[valid].mean()),
        num_valid_queries=num_valid,
        num_skipped_queries=int(len(valid) - num_valid),
        average_precision=ap.numpy() if return_per_query else None,
    )


def _validated_labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery, max_rank):
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if num_query == 0 or num_gallery == 0:
        raise ValueError(
            f"need at least one query and one gallery item, got {num_query} queries and "
            f"{num_gallery} gallery items"
        )
    return (
        _as_label_tensor(q_pids, "query_pids", num_query),
        _as_label_tensor(g_pids, "gallery_pids", num_gallery),
        _as_label_tensor(q_camids, "query_camids", num_query),
        _as_label_tensor(g_camids, "gallery_camids", num_gallery),
    )


def _rows_per_chunk(num_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(num_gallery, 1))


def evaluate_distance_matrix(
    distances: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 50,
    chunk_size: int | None = None,
    return_per_query: bool = False,
) -> RankingResult:
    """CMC / mAP / mINP from a precomputed ``(Q, G)`` distance matrix (smaller = closer).

    Args:
        distances: ``(Q, G)`` distances, numpy or torch, compared in float32; negative
            values (e.g. negated similarities) and ``+inf`` are fine, NaN is rejected.
        query_pids, gallery_pids: identity labels, ``(Q,)`` and ``(G,)`` integers.
        query_camids, gallery_camids: camera labels, ``(Q,)`` and ``(G,)`` integers.
        max_rank: length of the CMC curve, clipped to the gallery size.
        chunk_size: queries per chunk (default: a 32 MiB block of distances).
        return_per_query: also return per-query AP (NaN for skipped queries).
    """
    dist = _as_float_tensor(distances, "distances")
    # A sum is one cheap pass and is NaN whenever an entry is; only then look closer.
    if torch.isnan(dist.sum()) and torch.isnan(dist).any():
        raise ValueError("distances contain NaN; expected real numbers (+inf is allowed)")
    num_query, num_gallery = dist.shape
    labels = _validated_labels(
        query_pids, gallery_pids, query_camids, gallery_camids, num_query, num_gallery, max_rank
    )
    rows = _rows_per_chunk(num_gallery, chunk_size)
    chunks = ((s, dist[s : s + rows]) for s in range(0, num_query, rows))
    return _evaluate(chunks, *labels, max_rank=max_rank, return_per_query=return_per_query)


def evaluate_ranking(
    query_embeddings: ArrayLike,
    gallery_embeddings: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    metric: str = "euclidean",
    max_rank: int = 50,
    chunk_size: int | None = None,
    return_per_query: bool = False,
) -> RankingResult:
    """CMC / mAP / mINP from query and gallery embeddings, never holding the full matrix.

    Distances are computed one chunk of queries at a time (``metric`` is ``"euclidean"`` or
    ``"cosine"``), so memory is bounded by the chunk, not by ``Q x G``: MSMT17's
    11,659 x 82,161 evaluation fits in a few hundred MB beyond the embeddings. Euclidean
    ranking uses squared distances, which order the gallery identically.

    Args:
        query_embeddings: ``(Q, D)`` float embeddings.
        gallery_embeddings: ``(G, D)`` float embeddings.
        query_pids, gallery_pids, query_camids, gallery_camids: integer labels.
        metric, max_rank, chunk_size, return_per_query: see :func:`evaluate_distance_matrix`.

    Raises:
        ValueError: bad shapes or labels, NaN or infinite embeddings, an unknown ``metric``,
            or, with ``metric="cosine"``, zero vectors (their cosine distance is undefined;
            :func:`reject_zero_vectors` names the rows).
    """
    q = _as_float_tensor(query_embeddings, "query_embeddings")
    g = _as_float_tensor(gallery_embeddings, "gallery_embeddings")
    _check_dims(q, g)
    for name, emb in (("query_embeddings", q), ("gallery_embeddings", g)):
        if not torch.isfinite(emb).all():
            raise ValueError(f"{name} contain NaN or inf; expected finite values")
    labels = _validated_labels(
        query_pids, gallery_pids, query_camids, gallery_camids, len(q), len(g), max_rank
    )
    gallery_side = _GallerySide(g, metric)
    _check_query_norms(q, metric)
    rows = _rows_per_chunk(len(g), chunk_size)
    chunks = (
        (s, gallery_side.distances(q[s : s + rows], squared=True)) for s in range(0, len(q), rows)
    )
    return _evaluate(chunks, *labels, max_rank=max_rank, return_per_query=return_per_query)
