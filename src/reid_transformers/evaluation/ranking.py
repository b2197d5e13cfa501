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

From embeddings, the metrics are defined by float32 distances (the reference,
:meth:`_GallerySide.distances`). ``evaluate_ranking(..., precision="bfloat16")`` reaches
the identical result with bfloat16 products: a rigorous bound on their error decides most
comparisons with a positive, and only the positives and the undecided pairs get their
float32 value, computed by the reference's own GEMM call so the bits agree. The default,
``precision="auto"``, takes that path where it was measured faster (docs/evaluation.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[int] | Sequence[float]

DISTANCE_METRICS = ("euclidean", "cosine")
PRECISIONS = ("bfloat16", "float32")
RANKING_PRECISIONS = ("auto", *PRECISIONS)

# precision="auto" takes the bfloat16 path from these sizes on. benchmarks/bench_ranking.py
# (2 CPU cores) measured it faster than float32 for 15,913 gallery items of 768-d (12.2 M
# gallery values; 1.11x and 1.24x in two runs) and of 2048-d (32.6 M) and for 82,161 items
# of 2048-d (168 M); settling costs per pair whatever the dimension while the product it
# saves costs per value, so small, narrow galleries stay float32, and for few queries the
# fixed cost, rounding the gallery, weighs more than the per-query saving.
_AUTO_MIN_GALLERY_VALUES = 10_000_000
_AUTO_MIN_QUERIES = 1_000

# Elements of one (query chunk x gallery) distance block: 2**25 float32 = 128 MiB. Every
# chunk's GEMM packs the whole gallery again, so at MSMT17 scale (408 rows per chunk) fewer,
# taller chunks make the product faster; memory stays well under the 2 GB goal.
_CHUNK_ELEMENTS = 1 << 25
# Zero-vector rows an error lists before "...".
_MAX_LISTED_ROWS = 10

# Floating-point facts the bfloat16 error bound uses (IEEE 754 binary32; bfloat16 is its top
# 16 bits, so 8 significant bits and the same exponent range).
_F32_UNIT = 2.0**-24  # float32 unit roundoff
_BF16_UNIT = 2.0**-8  # bfloat16 unit roundoff
_BF16_OUTPUT_ROUNDING = _BF16_UNIT / (1 - _BF16_UNIT)  # |rounded - exact| / |rounded|
_BF16_MIN_NORMAL = 2.0**-126
_F32_MAX = float(torch.finfo(torch.float32).max)
# Widening of computed bounds: covers float64 rounding in computing them (relative
# 2**-50 at most for these few operations) with a wide safety factor.
_WIDEN = 1 + 2.0**-20
_F64_SLACK = 2.0**-40
# Rows per block when measuring the bfloat16 rounding (a float32 copy: 64 MiB at 2048-d).
_NORM_BLOCK_ROWS = 8192
# Settlement multiplies groups of this many query rows by the columns they need, and
# never fewer than _MIN_SETTLE_COLUMNS columns: with 4, 8 or >= 12 rows and >= 16 columns,
# MKL's float32 GEMM gives every element the same bits whatever the other rows and columns
# are and in whichever order (measured; test_ranking checks it), so settled values equal
# the reference's.
_SETTLE_GROUP_ROWS = 16
_MIN_SETTLE_COLUMNS = 64
# ... a few hundred columns at a time: each gathered piece (4 MiB at 2048-d) is multiplied
# while it is still in cache, which made settlement several times faster than gathering
# all of a group's columns first.
_SETTLE_PIECE_COLUMNS = 512
# A chunk whose candidates (items that could precede a positive) exceed this fraction of
# its pairs is computed by the reference instead: settling a pair (a gathered float32
# gallery row) costs tens of times more than a pair of the dense float32 product. On
# Market-1501-sized galleries ~1% of the pairs were candidates with bench_ranking.py's
# features, 78-97% with near-useless ones (its "market poor" case).
_MAX_CANDIDATE_FRACTION = 1 / 16
# Products beyond this could overflow float32 in the candidate distances: no shortcut then.
_BF16_SAFE_PRODUCT = 2.0**120


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


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry of a float tensor is finite.

    A sum is finite only if every term is (infinities and NaN propagate), and summing is
    one pass without a mask the size of the tensor, many times faster than ``isfinite``;
    only a sum that overflows needs the entrywise check.
    """
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


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
    query: ArrayLike, gallery: ArrayLike, metric: str = "cosine"
) -> torch.Tensor:
    """Distance matrix between two sets of embeddings, in float32.

    Args:
        query: ``(Q, D)`` embeddings.
        gallery: ``(G, D)`` embeddings.
        metric: ``"cosine"`` (``1 - cosine similarity``, in [0, 2]; the package-wide
            default) or ``"euclidean"`` (L2 distance).

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
    return gallery_side.distances(gallery_side.queries(q), squared=False)


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


class _QueryBlock(NamedTuple):
    """A block of queries as the distance formulas use them.

    ``vectors``: ``(C, D)`` float32, L2-normalised for cosine. ``sq_norm``: ``(C, 1)``
    squared norms for Euclidean, ``None`` for cosine.
    """

    vectors: torch.Tensor
    sq_norm: torch.Tensor | None


class _GallerySide:
    """Gallery embeddings prepared once (normalised or squared norms) for blocks of queries.

    :meth:`distances` is the float32 reference: every metric is defined by the values it
    returns.
    """

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

    def queries(self, query: torch.Tensor) -> _QueryBlock:
        """Prepare a ``(C, D)`` block of queries once for :meth:`distances`."""
        if self.metric == "cosine":
            return _QueryBlock(torch.nn.functional.normalize(query, dim=1), None)
        return _QueryBlock(query, query.pow(2).sum(1, keepdim=True))

    def distances(
        self,
        block: _QueryBlock,
        squared: bool = True,
        rows: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(C, G)`` float32 distances of a query block (``squared`` applies to Euclidean),
        or only of its ``rows`` against the gallery ``columns`` (1-D index tensors)."""
        vectors = block.vectors if rows is None else block.vectors[rows]
        gallery = self.gallery if columns is None else self._gathered(columns)
        if self.metric == "cosine":
            return torch.addmm(torch.ones((), dtype=vectors.dtype), vectors, gallery.T, alpha=-1.0)
        sq_norm = self.sq_norm if columns is None else self.sq_norm[columns]
        dist = torch.addmm(sq_norm.unsqueeze(0), vectors, gallery.T, alpha=-2.0)
        dist.add_(block.sq_norm if rows is None else block.sq_norm[rows]).clamp_(min=0)
        return dist if squared else dist.sqrt_()


    def _gathered(self, columns: torch.Tensor) -> torch.Tensor:
        """``gallery[columns]``, written into a buffer kept between calls (allocating a
        fresh block each time costs more than the copy)."""
        if len(getattr(self, "_buffer", ())) < len(columns):
            self._buffer = torch.empty((len(columns), self.gallery.shape[1]))
        return torch.index_select(self.gallery, 0, columns, out=self._buffer[: len(columns)])


def _norm_bounds(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float64 upper bounds of the row norms of ``x`` ``(N, D)`` float32.

    The float32 norm is within ``gamma_(D+2)`` of the exact one relatively (``D`` squares
    summed in any order, then a square root), so widening it by twice that is an upper
    bound [Higham, Accuracy and Stability, 3.1].
    """
    widen = 1 + 2 * _gamma(x.shape[1] + 2)
    return torch.linalg.vector_norm(x, dim=1).double() * widen


class _Rounded(NamedTuple):
    """Rows rounded to bfloat16: ``low`` ``(N, D)``, and ``(N,)`` float64 upper bounds of
    the norms of the rows (``norm``), of ``low`` (``low_norm``) and of what rounding removed
    (``residual``; ``x - low`` is exact in float32)."""

    low: torch.Tensor
    norm: torch.Tensor
    low_norm: torch.Tensor
    residual: torch.Tensor


def _round_to_bfloat16(x: torch.Tensor) -> _Rounded:
    """Round ``(N, D)`` float32 rows to bfloat16, block by block (no float32 copy of ``x``)."""
    low = x.to(torch.bfloat16)
    low_norms, residuals = [], []
    for s in range(0, len(x), _NORM_BLOCK_ROWS):
        low_block = low[s : s + _NORM_BLOCK_ROWS].float()
        low_norms.append(_norm_bounds(low_block))
        residuals.append(_norm_bounds(low_block.sub_(x[s : s + _NORM_BLOCK_ROWS]).neg_()))
    return _Rounded(low, _norm_bounds(x), torch.cat(low_norms), torch.cat(residuals))


class _CandidateDistances:
    """bfloat16 distances plus a rigorous bound on how far each is from the float32 one.

    Notation, for one query ``q`` and gallery item ``g`` as the reference multiplies them
    (normalised for cosine), ``q~ g~`` their bfloat16 copies, ``dq = q - q~``,
    ``dg = g - g~`` (norms exact up to float64 rounding), ``s`` the exact dot product,
    ``K`` the dimension, ``u = 2**-24`` and ``gamma_n = n u / (1 - n u)``.

    - **Candidate dot product.** Products of bfloat16 numbers are exact in float32 and
      are summed in float32, so the sum is within ``gamma_K |q~| |g~|`` of ``q~ . g~``
      (any summation order [Higham, Accuracy and Stability, 3.1]); it is then rounded to
      bfloat16, which moves it by at most ``2**-8 / (1 - 2**-8)`` of the rounded value
      ``p`` (plus ``2**-126`` if flushed). And ``q~ . g~ - s = -(q~ . dg + dq . g)``,
      at most ``|q~| |dg| + |dq| |g|`` (Cauchy-Schwarz).
    - **Reference.** The float32 product adds ``K + 1`` terms (the bias ``1`` or
      ``|g|^2`` and the ``K`` scaled products), within ``gamma_(K+1)`` of their absolute
      sum; Euclidean then adds ``|q|^2`` (one rounding of at most ``u (|q| + |g|)^2``).
    - **Candidate distance.** ``1 - p`` (cosine) or ``|g|^2 - 2p + |q|^2`` (Euclidean,
      the same float32 norms as the reference) costs one or two more roundings.

    Both distances are 1-Lipschitz in the dot product up to the factor 2 of Euclidean, and
    clamping at 0 is 1-Lipschitz, so ``|candidate - reference| <= margin + w |p|`` with a
    per-query ``margin`` (the terms above, each gallery norm at its maximum) and
    ``w = scale 2**-8 / (1 - 2**-8)``. All bounds are widened by a factor ``1 + 2**-20`` so
    the float64 arithmetic that computes them cannot make them smaller than stated.
    """

    def __init__(self, side: _GallerySide) -> None:
        self.side = side
        self.dim = side.gallery.shape[1]
        self.scale = 1.0 if side.metric == "cosine" else 2.0
        rounded = _round_to_bfloat16(side.gallery)
        self.gallery = rounded.low
        self.max_norm = float(rounded.norm.max())
        self.max_low_norm = float(rounded.low_norm.max())
        self.max_residual = float(rounded.residual.max())

    @property
    def usable(self) -> bool:
        """False when a gallery value overflows bfloat16 (the bound would be infinite)."""
        return math.isfinite(self.max_residual) and math.isfinite(self.max_low_norm)

    def products(self, block: _QueryBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a query block: the ``(C, G)`` bfloat16 products ``p``, and ``(C,)`` float64
        ``margin`` and ``cap`` (an upper bound of every ``|p|`` of the row)."""
        rounded = _round_to_bfloat16(block.vectors)
        products = rounded.low @ self.gallery.T
        margin = self._margins(rounded)
        cap = rounded.low_norm * self.max_low_norm * (1 + _gamma(self.dim)) * (1 + 2 * _BF16_UNIT)
        return products, margin, cap

    def within(
        self, products: torch.Tensor, block: _QueryBlock, threshold: torch.Tensor, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The pairs whose candidate distance (squared for Euclidean) is at most their
        row's ``threshold`` ``(C,)`` float32: ``(rows, cols, values)``, row-major; or
        ``None`` when more than ``limit`` pairs (a slight over-count for cosine) are found.

        Candidate distances are ``1 - p`` (cosine) or ``|g|^2 - 2p + |q|^2`` (Euclidean,
        clamped at 0), in float32. For cosine they fall as ``p`` grows, so the scan reads
        the bfloat16 products (half the bytes of a float32 matrix, and no such matrix is
        built) for ``p`` above a floor a little below the exact cut, and the exact test
        runs on the few pairs found."""
        if self.side.metric == "cosine":
            # fl(1 - p) <= t implies 1 - p <= t + 2**-23 (|t| + 1): a safe floor for p.
            t = threshold.double().clamp(-_F32_MAX, _F32_MAX)  # no inf - inf below
            floor = bfloat16_at_least(1.0 - t - 2.0**-22 * (1.0 + t.abs()))
            # bfloat16 against bfloat16: 4x faster than against a float32 floor.
            found = products >= floor.unsqueeze(1)
        else:
            dist = products.float().mul_(-2.0).add_(self.side.sq_norm)
            dist.add_(block.sq_norm).clamp_(min=0)
            found = dist <= threshold.unsqueeze(1)
        if int(torch.count_nonzero(found)) > limit:  # no int64 copy, unlike sum()
            return None
        rows, cols = found.nonzero(as_tuple=True)
        if self.side.metric == "cosine":
            values = torch.sub(1.0, products[rows, cols].float())
        else:
            values = dist[rows, cols]
        keep = values <= threshold[rows]
        return rows[keep], cols[keep], values[keep]

    def _margins(self, rounded: _Rounded) -> torch.Tensor:
        """``(C,)`` float64 per-query ``margin`` (see the class docstring)."""
        norm, low_norm = rounded.norm, rounded.low_norm
        big_g, big_low_g = self.max_norm, self.max_low_norm
        # bfloat16 subnormal inputs, sums and outputs may be flushed to zero by the kernel.
        flushed = _BF16_MIN_NORMAL * (self.dim + 1 + math.sqrt(self.dim) * (low_norm + big_low_g))
        dot_error = (
            _gamma(self.dim) * low_norm * big_low_g
            + low_norm * self.max_residual
            + rounded.residual * big_g
            + flushed
        )
        gamma_reference = _gamma(self.dim + 1)
        if self.side.metric == "cosine":
            reference_error = gamma_reference * (1.0 + norm * big_g)
            rounding = 4 * _F32_UNIT * (1.0 + 2.0 * norm * big_g)
        else:
            reach = (norm + big_g) ** 2
            reference_error = gamma_reference * (big_g**2 + 2 * norm * big_g)
            reference_error = reference_error + 2 * _F32_UNIT * reach
            rounding = 4 * _F32_UNIT * reach
        return (self.scale * dot_error + reference_error + rounding) * _WIDEN

    def pair_bounds(
        self, margin: torch.Tensor, products: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Float64 bound per pair from its ``margin``, ``|p|`` bound ``products`` and
        ``values``, widened so that ``values +- bound`` computed in float64 still hold the
        exact interval."""
        spread = self.scale * _BF16_OUTPUT_ROUNDING * products.double().abs()
        return (margin + spread) * _WIDEN + _F64_SLACK * values.double().abs()


def bfloat16_at_least(values: torch.Tensor) -> torch.Tensor:
    """The smallest bfloat16 >= each value (float32 or float64, no NaN): a bfloat16 ``x``
    is ``>= values`` exactly when it is ``>=`` the result."""
    rounded = values.to(torch.bfloat16)
    upward = torch.nextafter(rounded, torch.full_like(rounded, math.inf))
    return torch.where(rounded.double() < values, upward, rounded)


def _gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for float32 (``u = 2**-24``)."""
    if n * _F32_UNIT >= 0.01:
        raise ValueError(f"embedding dimension {n} is too large for the bfloat16 error bound")
    return n * _F32_UNIT / (1 - n * _F32_UNIT)


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


def _positive_slots(
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
    lookup: _PositiveLookup,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, positive)``, both ``(C, M)``: each query's same-identity gallery items and
    which of them are positives (another camera, not junk)."""
    same_id, in_group = lookup.same_identity(q_pids)
    positive = (
        in_group
        & (g_camids[same_id] != q_camids.unsqueeze(1))
        & (g_pids[same_id] != -1)
    )
    return same_id, positive


def order_keys_(bits: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Turn float bit patterns (``bits``: int16 for bfloat16, int32 for float32, any shape)
    in place into signed integer keys that order like the values (``-0`` just below
    ``+0``); applied twice it restores them.

    Floats are sign and magnitude, so read as integers the non-negative values already
    order correctly and the negative ones backwards: flipping the magnitude bits of the
    negative ones fixes that. Integer compares and sorts run several times faster than
    float ones on CPUs. ``scratch`` (same dtype and shape) avoids a temporary.
    """
    flip = torch.bitwise_right_shift(bits, bits.element_size() * 8 - 1, out=scratch)
    return bits.bitwise_xor_(flip.bitwise_and_(torch.iinfo(bits.dtype).max))


def _order_preserving_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2**32) with the same order; equal floats (0.0, -0.0) equal."""
    bits = order_keys_((values + 0.0).view(torch.int32))  # + 0.0: -0.0 becomes 0.0, a copy
    return bits.to(torch.int64) + (1 << 31)


def _row_keys(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering ``(row, float32 value)`` pairs by row, then by value."""
    return (rows << 32) | _order_preserving_bits(values)


def _rank_chunk(
    dist: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
    lookup: _PositiveLookup,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metrics for one chunk of queries from its ``(C, G)`` distances: see
    :func:`_rank_pairs`."""
    same_id, positive = _positive_slots(q_pids, q_camids, g_pids, g_camids, lookup)
    hardest = dist.gather(1, same_id).masked_fill_(~positive, float("-inf")).amax(1)
    # Items no farther than the hardest positive hold every positive and everything ranked
    # above one.
    rows, cols = (dist <= hardest.unsqueeze(1)).nonzero(as_tuple=True)  # row-major
    return _rank_pairs(
        rows, cols, dist[rows, cols], positive.sum(1), q_pids, q_camids, g_pids, g_camids
    )


def _rank_pairs(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    num_pos: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metrics for one chunk of ``C`` queries from the (query row, gallery item) pairs no
    farther than their query's hardest positive: ``rows``, ``cols`` and float32 distance
    ``values``, row-major (``cols`` ascending within a row). Every positive must be among
    them; removed items (same identity and camera, junk) are skipped when counting, so
    they may or may not be. ``num_pos``: ``(C,)`` positives per query.

    Returns ``(first_rank, ap, inp)``, each ``(C,)``; skipped queries have ``first_rank``
    0 and NaN AP / INP. Ranks are 1-based among the query's *valid* gallery items.
    """
    num_queries = len(num_pos)
    # Order by (query, distance, gallery index) with one stable integer sort (radix-fast):
    # cols already ascend within a row, and the key packs the row above the distance bits.
    order = _row_keys(rows, values).sort(stable=True)[1]
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


ChunkMetrics = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (first_rank, ap, inp)


def _evaluate(
    chunk_metrics: Iterator[ChunkMetrics], num_gallery: int, max_rank: int,
    return_per_query: bool,
) -> RankingResult:
    """The means and CMC curve of the per-chunk results of :func:`_rank_pairs`."""
    max_rank = min(max_rank, num_gallery)
    results = list(chunk_metrics)
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
        chunk_size: queries per chunk (default: a 128 MiB block of distances).
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
    q_pids, g_pids, q_camids, g_camids = labels
    lookup = _PositiveLookup(g_pids)
    rows = _rows_per_chunk(num_gallery, chunk_size)
    chunks = (
        _rank_chunk(dist[s : s + rows], q_pids[s : s + rows], q_camids[s : s + rows], g_pids,
                    g_camids, lookup)
        for s in range(0, num_query, rows)
    )
    return _evaluate(chunks, num_gallery, max_rank, return_per_query)


def _settled_metrics(
    candidates: _CandidateDistances,
    block: _QueryBlock,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_pids: torch.Tensor,
    g_camids: torch.Tensor,
    lookup: _PositiveLookup,
) -> ChunkMetrics:
    """Metrics of a query block, identical to the float32 reference's, from bfloat16
    candidates and float32 settlement.

    Ranking keys are the bfloat16 candidate distances, except that the positives and
    every pair whose order relative to one of its query's positives the error bound
    cannot decide (its interval ``value +- bound`` holds that positive's reference value)
    get their float32 reference values. Then for each positive ``p`` and each gallery
    item ``j`` either both keys are reference values, or ``j``'s interval holds its
    reference value and its key but not ``p``'s reference value, so both lie on the same
    side of it and ``(key_j, j) < (key_p, p)`` exactly when the reference says so: every
    positive has its reference rank, and CMC / AP / INP depend on nothing else. (Settling
    the few positives first leaves each comparison one interval against a point, not two
    intervals, so fewer pairs need settling.) Items of the query's identity that are not
    positives, and junk items, are removed from its ranking: they are left out.
    """
    def reference() -> ChunkMetrics:
        return _rank_chunk(candidates.side.distances(block), q_pids, q_camids, g_pids,
                           g_camids, lookup)

    products, margin, cap = candidates.products(block)
    if not (bool(torch.isfinite(margin).all()) and float(cap.max()) < _BF16_SAFE_PRODUCT):
        return reference()  # the bound would overflow: no shortcut
    same_id, positive = _positive_slots(q_pids, q_camids, g_pids, g_camids, lookup)
    pos_rows, pos_slots = positive.nonzero(as_tuple=True)  # row-major
    pos_cols = same_id[pos_rows, pos_slots]
    row_order = torch.argsort(q_pids, stable=True)
    pos_values = _settle(candidates.side, block, pos_rows, pos_cols, row_order)
    hardest = torch.full((len(q_pids),), -math.inf, dtype=torch.float64).scatter_reduce_(
        0, pos_rows, pos_values.double(), reduce="amax"
    )  # -inf for a query without positives: nothing to rank
    # Only items whose interval starts below the hardest positive can precede a
    # positive; `cap` bounds every |p| of the row, hence every item's bound.
    reach = hardest + candidates.pair_bounds(margin, cap, hardest.nan_to_num(neginf=0.0))
    threshold = torch.nextafter(reach.float(), torch.tensor(math.inf))  # never rounds down
    found = candidates.within(
        products, block, threshold, limit=int(products.numel() * _MAX_CANDIDATE_FRACTION)
    )
    if found is None:
        # Poor embeddings put much of the gallery ahead of a positive; settling pairs one
        # gathered column at a time then costs more than the reference's dense product.
        return reference()
    rows, cols, values = found
    ranked_negative = (g_pids[cols] != q_pids[rows]) & (g_pids[cols] != -1)
    rows, cols, values = rows[ranked_negative], cols[ranked_negative], values[ranked_negative]
    positive_keys = _row_keys(pos_rows, pos_values).sort()[0]
    step = _CHUNK_ELEMENTS // 16  # pairs tested at once: ~100 bytes of temporaries each
    undecided = torch.cat([
        _holds_a_positive(candidates, products, margin, positive_keys, rows[s : s + step],
                          cols[s : s + step], values[s : s + step])
        for s in range(0, len(rows), step)
    ]).nonzero().squeeze(1) if len(rows) else torch.zeros(0, dtype=torch.int64)
    values[undecided] = _settle(
        candidates.side, block, rows[undecided], cols[undecided], row_order
    )
    # The negatives no farther than the hardest positive, and the positives, row-major.
    ahead = values <= hardest[rows]
    rows = torch.cat([rows[ahead], pos_rows])
    cols = torch.cat([cols[ahead], pos_cols])
    order = (rows * len(g_pids) + cols).sort()[1]
    return _rank_pairs(
        rows[order], cols[order], torch.cat([values[ahead], pos_values])[order],
        positive.sum(1), q_pids, q_camids, g_pids, g_camids,
    )


def _holds_a_positive(candidates, products, margin, positive_keys, rows, cols, values):
    """``(n,)`` bool: does the interval of pair ``(rows, cols)``, candidate distance
    ``values``, hold a positive reference value of its query? ``positive_keys``: the
    sorted :func:`_row_keys` of every (query row, positive reference value)."""
    values = values.double()
    bounds = candidates.pair_bounds(margin[rows], products[rows, cols], values)
    # Ends rounded outwards to float32 (one more step than needed): the interval only grows.
    low = torch.nextafter((values - bounds).float(), torch.tensor(-math.inf))
    high = torch.nextafter((values + bounds).float(), torch.tensor(math.inf))
    first = torch.searchsorted(positive_keys, _row_keys(rows, low), side="left")
    past = torch.searchsorted(positive_keys, _row_keys(rows, high), side="right")
    return past > first


def _settle(
    side: _GallerySide,
    block: _QueryBlock,
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_order: torch.Tensor,
) -> torch.Tensor:
    """The float32 reference distances of the pairs ``(rows, cols)``, ``(n,)``.

    Query rows are taken ``_SETTLE_GROUP_ROWS`` at a time in ``row_order`` (a permutation
    of the block's rows, at least that many), and each group is multiplied by the union
    of the columns its rows need, padded to ``_MIN_SETTLE_COLUMNS``, a piece at a time
    (:func:`_column_pieces`), with the reference's own GEMM call, so each value has the
    bits the reference computes. Ordering rows by identity puts queries whose pairs lie
    around the same positives in one group, so the unions, which cost a gather and a
    product each, are smaller.
    """
    num_rows, num_gallery = len(row_order), len(side.gallery)
    values = torch.empty(len(rows))
    padding = torch.arange(min(_MIN_SETTLE_COLUMNS, num_gallery))
    position = torch.empty_like(row_order)
    position[row_order] = torch.arange(num_rows)
    pair_position = position[rows]
    by_group = torch.argsort(pair_position, stable=True)
    cols, pair_position = cols[by_group], pair_position[by_group]
    bounds = torch.arange(0, num_rows + _SETTLE_GROUP_ROWS, _SETTLE_GROUP_ROWS)
    slices = torch.searchsorted(pair_position, bounds.clamp(max=num_rows)).tolist()
    for index, (first, last) in enumerate(itertools.pairwise(slices)):
        if first == last:
            continue
        stop = min((index + 1) * _SETTLE_GROUP_ROWS, num_rows)
        start = max(0, stop - _SETTLE_GROUP_ROWS)
        c = cols[first:last]
        columns = torch.unique(torch.cat([c, padding]))
        exact = torch.cat([
            side.distances(block, rows=row_order[start:stop], columns=columns[a:b])
            for a, b in _column_pieces(len(columns))
        ], dim=1)
        values[by_group[first:last]] = exact[
            pair_position[first:last] - start, torch.searchsorted(columns, c)
        ]
    return values


def _column_pieces(num_columns: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pieces of ``_SETTLE_PIECE_COLUMNS`` columns covering
    ``num_columns`` (>= ``_MIN_SETTLE_COLUMNS``), none narrower than that minimum."""
    starts = list(range(0, num_columns, _SETTLE_PIECE_COLUMNS))
    if len(starts) > 1 and num_columns - starts[-1] < _MIN_SETTLE_COLUMNS:
        starts.pop()  # the last piece takes the remainder
    return itertools.pairwise([*starts, num_columns])


def native_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN with AVX-512 BF16 or
    AMX); elsewhere bfloat16 products are emulated and slower than float32 ones."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_precision(precision: str, num_query: int, num_gallery: int, dim: int) -> str:
    """The precision :func:`evaluate_ranking` computes with: ``"bfloat16"`` or ``"float32"``.

    ``"auto"`` is ``"bfloat16"`` on CPUs with native bfloat16 products for at least
    ``_AUTO_MIN_QUERIES`` queries and a gallery of at least ``_AUTO_MIN_GALLERY_VALUES``
    values (items x dimension; where benchmarks/bench_ranking.py measured it faster),
    ``"float32"`` otherwise; the other values are returned as they are. Both give
    identical metrics, so this is speed only.

    Raises:
        ValueError: ``precision`` is not one of ``RANKING_PRECISIONS``.
    """
    if precision not in RANKING_PRECISIONS:
        raise ValueError(f"precision must be one of {RANKING_PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    large = num_query >= _AUTO_MIN_QUERIES and num_gallery * dim >= _AUTO_MIN_GALLERY_VALUES
    return "bfloat16" if large and native_bfloat16_matmul() else "float32"


def _chunk_metrics(
    side: _GallerySide,
    precision: str,
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    lookup: _PositiveLookup,
) -> Callable[[int, torch.Tensor], ChunkMetrics]:
    """``(start, queries (C, D)) -> `` the chunk's :func:`_rank_pairs` results, computed
    with ``precision`` (one of ``PRECISIONS``)."""
    q_pids, g_pids, q_camids, g_camids = labels

    def reference(start: int, queries: torch.Tensor) -> ChunkMetrics:
        stop = start + len(queries)
        return _rank_chunk(side.distances(side.queries(queries)), q_pids[start:stop],
                           q_camids[start:stop], g_pids, g_camids, lookup)

    # Settlement needs the reference GEMM to behave the same on column subsets, which
    # holds from _MIN_SETTLE_COLUMNS columns; smaller galleries cost nothing anyway. A
    # lowered float32 matmul precision would void the reference's error bound.
    if (
        precision == "float32"
        or len(g_pids) < _MIN_SETTLE_COLUMNS
        or torch.get_float32_matmul_precision() != "highest"
    ):
        return reference
    candidates = _CandidateDistances(side)
    if not candidates.usable:
        return reference

    def settled(start: int, queries: torch.Tensor) -> ChunkMetrics:
        if len(queries) < _SETTLE_GROUP_ROWS:
            # Fewer rows than one settlement group: the reference's own call for so few
            # rows gives other bits than the group's (MKL), and it is cheap.
            return reference(start, queries)
        stop = start + len(queries)
        return _settled_metrics(
            candidates, side.queries(queries), q_pids[start:stop], q_camids[start:stop],
            g_pids, g_camids, lookup,
        )

    return settled


def evaluate_ranking(
    query_embeddings: ArrayLike,
    gallery_embeddings: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    metric: str = "cosine",
    precision: str = "auto",
    max_rank: int = 50,
    chunk_size: int | None = None,
    return_per_query: bool = False,
) -> RankingResult:
    """CMC / mAP / mINP from query and gallery embeddings, never holding the full matrix.

    Distances are computed one chunk of queries at a time (``metric`` is ``"cosine"``, the
    package-wide default, or ``"euclidean"``), so memory is bounded by the chunk, not by
    ``Q x G`` (docs/evaluation.md has the measured peaks). Euclidean ranking uses squared
    distances, which order the gallery identically.

    The metrics are defined by float32 distances; ``precision="float32"`` computes only
    those. ``precision="bfloat16"`` returns the *identical* result another way: it ranks
    with bfloat16 products and a rigorous bound on their error, and recomputes in float32
    only the positives and the pairs whose order relative to a positive the bound leaves
    open (see :class:`_CandidateDistances` and :func:`_settled_distances`; galleries under
    64 items always use float32). ``precision="auto"`` (the default) takes whichever
    benchmarks/bench_ranking.py measured faster for the sizes and CPU at hand (see
    :func:`resolve_precision`; docs/evaluation.md has the measured times and memory).

    Args:
        query_embeddings: ``(Q, D)`` float embeddings.
        gallery_embeddings: ``(G, D)`` float embeddings.
        query_pids, gallery_pids, query_camids, gallery_camids: integer labels.
        metric: ``"cosine"`` or ``"euclidean"``.
        precision: ``"auto"``, ``"bfloat16"`` (candidates, then exact settlement) or
            ``"float32"``; the metrics are the same for all three.
        max_rank, chunk_size, return_per_query: see :func:`evaluate_distance_matrix`.

    Raises:
        ValueError: bad shapes or labels, NaN or infinite embeddings, an unknown ``metric``
            or ``precision``, or, with ``metric="cosine"``, zero vectors (their cosine
            distance is undefined; :func:`reject_zero_vectors` names the rows).
    """
    q = _as_float_tensor(query_embeddings, "query_embeddings")
    g = _as_float_tensor(gallery_embeddings, "gallery_embeddings")
    _check_dims(q, g)
    for name, emb in (("query_embeddings", q), ("gallery_embeddings", g)):
        if not all_finite(emb):
            raise ValueError(f"{name} contain NaN or inf; expected finite values")
    labels = _validated_labels(
        query_pids, gallery_pids, query_camids, gallery_camids, len(q), len(g), max_rank
    )
    gallery_side = _GallerySide(g, metric)
    _check_query_norms(q, metric)
    lookup = _PositiveLookup(labels[1])
    precision = resolve_precision(precision, len(q), len(g), g.shape[1])
    metrics = _chunk_metrics(gallery_side, precision, labels, lookup)
    rows = _rows_per_chunk(len(g), chunk_size)
    chunks = (metrics(s, q[s : s + rows]) for s in range(0, len(q), rows))
    return _evaluate(chunks, len(g), max_rank, return_per_query)
