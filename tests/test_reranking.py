"""Tests for k-reciprocal re-ranking against a literal, loop-based reference."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_transformers.evaluation import reranking
from reid_transformers.evaluation.ranking import PRECISIONS, order_keys_
from reid_transformers.evaluation.reranking import k_reciprocal_rerank


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """The inputs here are tiny: one thread avoids paying thread-pool synchronisation on
    every small op, which dominates the run time on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_rerank(
    query: np.ndarray,
    gallery: np.ndarray,
    k1: int,
    k2: int,
    lambda_value: float,
    metric: str = "euclidean",
) -> np.ndarray:
    """Zhong et al.'s re-ranking written out item by item (dense N x N, stable argsort)."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    num_query, num_items = len(query), len(features)
    if metric == "euclidean":
        dist = ((features[:, None, :] - features[None, :, :]) ** 2).sum(axis=2)
    else:
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        dist = 1.0 - unit @ unit.T
    dist = dist.astype(np.float32)
    # Column-wise max normalisation followed by a transpose, as the reference does.
    original = (dist / dist.max(axis=0)).T
    initial_rank = np.argsort(original, axis=1, kind="stable")

    def k_reciprocal(item: int, k: int) -> np.ndarray:
        forward = initial_rank[item, : k + 1]
        members = [c for c in forward if item in initial_rank[c, : k + 1]]
        return np.array(members, dtype=np.int64)

    weights = np.zeros((num_items, num_items), dtype=np.float32)
    for i in range(num_items):
        recip = k_reciprocal(i, k1)
        expansion = list(recip)
        for candidate in recip:
            candidate_recip = k_reciprocal(candidate, int(np.around(k1 / 2)))
            overlap = len(np.intersect1d(candidate_recip, recip))
            if overlap > 2.0 / 3.0 * len(candidate_recip):
                expansion.extend(candidate_recip)
        expansion = np.unique(np.array(expansion, dtype=np.int64))
        w = np.exp(-original[i, expansion])
        weights[i, expansion] = w / np.sum(w)

    if k2 != 1:
        expanded = np.zeros_like(weights)
        for i in range(num_items):
            expanded[i] = np.mean(weights[initial_rank[i, :k2]], axis=0)
        weights = expanded

    jaccard = np.zeros((num_query, num_items), dtype=np.float32)
    for i in range(num_query):
        for j in range(num_items):
            shared = np.minimum(weights[i], weights[j]).sum(dtype=np.float32)
            jaccard[i, j] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


def clustered(
    seed: int, num_query: int = 20, num_gallery: int = 60, dim: int = 16, num_ids: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian identity centres plus noise; returns (query, gallery, q_ids, g_ids)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    q_ids = rng.integers(num_ids, size=num_query)
    g_ids = rng.integers(num_ids, size=num_gallery)
    query = centres[q_ids] + 0.8 * rng.normal(size=(num_query, dim))
    gallery = centres[g_ids] + 0.8 * rng.normal(size=(num_gallery, dim))
    return query.astype(np.float32), gallery.astype(np.float32), q_ids, g_ids


def with_duplicates(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer features with many repeated points, so equal distances occur
    everywhere, including across the k1 + 1 boundary.

    With 16 + 48 = 64 items the centring shift is a multiple of 1/64, so every float32
    operation on these values is exact and ties are exact ties in both implementations.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(24, 6)).astype(np.float32)
    gallery = base[rng.integers(24, size=48)]
    query = np.concatenate([gallery[rng.choice(48, size=10, replace=False)], base[:6]])
    return query, gallery


def mean_average_precision(dist: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray) -> float:
    aps = []
    for row, qid in zip(dist, q_ids, strict=True):
        hits = g_ids[np.argsort(row, kind="stable")] == qid
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("k1", "k2", "lambda_value"),
    [(20, 6, 0.3), (10, 1, 0.3), (7, 3, 0.0), (3, 4, 1.0), (1, 2, 0.5), (5, 6, 0.7)],
)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_reference(
    seed: int, k1: int, k2: int, lambda_value: float, metric: str, precision: str
) -> None:
    query, gallery, _, _ = clustered(seed)
    expected = reference_rerank(query, gallery, k1, k2, lambda_value, metric)
    got = k_reciprocal_rerank(
        query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric, chunk_size=16,
        precision=precision,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (6, 1), (4, 5), (2, 2), (1, 1), (9, 3)])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_reference_with_ties(seed: int, k1: int, k2: int, precision: str) -> None:
    query, gallery = with_duplicates(seed)
    expected = reference_rerank(query, gallery, k1, k2, 0.3)
    got = k_reciprocal_rerank(
        query, gallery, k1=k1, k2=k2, metric="euclidean", chunk_size=13, precision=precision
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_reference_with_offset_and_spread_norms(precision: str) -> None:
    """A large common offset and norms spread over two orders of magnitude stress the
    float32 cancellation and the bfloat16 error bound."""
    query, gallery, _, _ = clustered(15, num_query=15, num_gallery=120)
    rng = np.random.default_rng(15)
    scale = 10.0 ** rng.uniform(-1, 1, size=(135, 1)).astype(np.float32)
    features = np.concatenate([query, gallery]) * scale + 40.0
    query, gallery = features[:15], features[15:]
    for metric in ("euclidean", "cosine"):
        expected = reference_rerank(query, gallery, 20, 6, 0.3, metric)
        got = k_reciprocal_rerank(
            query, gallery, metric=metric, chunk_size=32, precision=precision
        )
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_default_metric_is_cosine() -> None:
    query, gallery, _, _ = clustered(16, num_query=6, num_gallery=30)
    assert torch.equal(
        k_reciprocal_rerank(query, gallery, k1=6, k2=3),
        k_reciprocal_rerank(query, gallery, k1=6, k2=3, metric="cosine"),
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_exactly_on_cpus_with_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(reranking, "native_bfloat16_matmul", lambda: native)
    assert reranking._use_bfloat16("auto", torch.device("cpu")) is native
    assert reranking._use_bfloat16("auto", torch.device("cuda")) is False
    assert reranking._use_bfloat16("float32", torch.device("cpu")) is False
    assert reranking._use_bfloat16("bfloat16", torch.device("cpu")) is True
    query, gallery, _, _ = clustered(16, num_query=6, num_gallery=30)
    # The same neighbour sets; the values may differ in the last float32 bits.
    torch.testing.assert_close(
        k_reciprocal_rerank(query, gallery, k1=6, k2=3),
        k_reciprocal_rerank(query, gallery, k1=6, k2=3, precision="float32"),
        rtol=0, atol=1e-6,
    )


@pytest.mark.parametrize("offset", [0.0, 30.0])
@pytest.mark.parametrize("shift_scale", [None, 0.0, 1.0, 10.0])
def test_bfloat16_interval_holds_the_exact_distance(
    offset: float, shift_scale: float | None
) -> None:
    """Every exact float32 distance lies in [lower(p), upper(p)] of its bfloat16 product,
    including for norms spread over four orders of magnitude, whatever the shift (the
    sampled estimate, zero, or multiples of the mean squared norm)."""
    rng = np.random.default_rng(17)
    raw = rng.normal(size=(300, 64)) * 10.0 ** rng.uniform(-2, 2, size=(300, 1)) + offset
    features = reranking._prepare_features(torch.from_numpy(raw.astype(np.float32)), "euclidean")
    items = torch.arange(len(features))
    sq_norms = reranking._pair_dots(features, items, items)
    if shift_scale is None:
        shift = reranking._typical_near_distance(features, sq_norms, 22)
    else:
        shift = shift_scale * float(sq_norms.mean())
    bounds = reranking._shifted_half_distances(features, sq_norms, shift)
    assert bounds.shift == shift
    p = (bounds.left @ bounds.right.T).double()
    rows, cols = torch.meshgrid(items, items, indexing="ij")
    exact = reranking._pair_distances(features, sq_norms, rows.flatten(), cols.flatten())
    exact = exact.view(p.shape).double()
    slack = bounds.slack.unsqueeze(1)
    lower = 2 * p - 2 * reranking._BF16_ROUNDING * p.abs() + bounds.shift - slack
    upper = 2 * p + 2 * reranking._BF16_ROUNDING * p.abs() + bounds.shift + slack
    assert bool((exact >= lower).all()) and bool((exact <= upper).all())
    # The bound is not vacuous: it is within a small factor of the largest actual error.
    assert float(bounds.slack.max()) < 40 * float((exact - 2 * p - bounds.shift).abs().max())


def test_bfloat16_settles_only_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bfloat16 path computes exact distances for a small share of gallery pairs, and
    still matches the float32 path."""
    settled = []
    original = reranking._pair_distances

    def count_pairs(features, sq_norms, rows, cols):
        settled.append(rows.numel())
        return original(features, sq_norms, rows, cols)

    monkeypatch.setattr(reranking, "_pair_distances", count_pairs)
    query, gallery, _, _ = clustered(18, num_query=20, num_gallery=600, dim=32, num_ids=30)
    fast = k_reciprocal_rerank(query, gallery, precision="bfloat16", chunk_size=128)
    assert 0 < settled[0] < 600 * 600 / 10
    plain = k_reciprocal_rerank(query, gallery, precision="float32", chunk_size=128)
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("blocks", "split"), [([(0, 3), (3, 7), (7, 10)], 3), ([(0, 4)], 0)])
def test_schedule_covers_every_pair_once(blocks: list[tuple[int, int]], split: int) -> None:
    num_items = blocks[-1][1]
    covered = torch.zeros(num_items, num_items, dtype=torch.long)
    pieces = reranking._schedule(blocks, num_items, split, piece_entries=5)
    for r0, r1, c0, c1 in pieces:
        assert not (c0 < split < c1)
        block = covered[r0:r1, c0:c1]
        # A diagonal block holds both orders of its pairs; count each pair once.
        block += torch.ones_like(block).triu() if c0 == r0 else 1
    unordered = covered + covered.T - covered.diagonal().diag()
    assert bool((unordered == 1).all())
    # Diagonal blocks come first.
    is_diagonal = [c0 == r0 for r0, _, c0, _ in pieces]
    assert is_diagonal == sorted(is_diagonal, reverse=True)


def test_tie_fallback_and_distance_recomputation_paths_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tie data above must exercise the exact-tie fallback and off-table distances,
    otherwise the reference comparison would not cover them."""
    calls = {"fallback": 0, "pairs": 0}
    original_fallback = reranking._rank_rows_exactly
    original_pairs = reranking._pair_distances

    def count_fallback(*args, **kwargs):
        calls["fallback"] += 1
        return original_fallback(*args, **kwargs)

    def count_pairs(*args, **kwargs):
        calls["pairs"] += 1
        return original_pairs(*args, **kwargs)

    monkeypatch.setattr(reranking, "_rank_rows_exactly", count_fallback)
    monkeypatch.setattr(reranking, "_pair_distances", count_pairs)
    query, gallery = with_duplicates(0)
    got = k_reciprocal_rerank(query, gallery, metric="euclidean", chunk_size=13)
    np.testing.assert_allclose(got.numpy(), reference_rerank(query, gallery, 20, 6, 0.3), atol=1e-5)
    assert calls["fallback"] > 0
    assert calls["pairs"] > 0


def test_fewer_items_than_k1() -> None:
    query, gallery, _, _ = clustered(4, num_query=2, num_gallery=3)
    expected = reference_rerank(query, gallery, 20, 6, 0.3)
    got = k_reciprocal_rerank(query, gallery, metric="euclidean")
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_more_queries_than_gallery() -> None:
    query, gallery, _, _ = clustered(14, num_query=30, num_gallery=5)
    expected = reference_rerank(query, gallery, 20, 6, 0.3)
    got = k_reciprocal_rerank(query, gallery, metric="euclidean", chunk_size=64)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_single_query_single_gallery() -> None:
    query, gallery = np.zeros((1, 3)), np.ones((1, 3))
    got = k_reciprocal_rerank(query, gallery, k1=1, k2=1, metric="euclidean")
    np.testing.assert_allclose(got.numpy(), reference_rerank(query, gallery, 1, 1, 0.3))


def test_all_identical_embeddings_give_finite_output() -> None:
    got = k_reciprocal_rerank(np.ones((3, 4)), np.ones((5, 4)), metric="euclidean")
    assert torch.isfinite(got).all()
    # Every item has the same neighbourhood, so the Jaccard distance is 0 and so is d.
    np.testing.assert_array_equal(got.numpy(), np.zeros((3, 5), dtype=np.float32))


def test_shape_dtype_and_input_types_agree() -> None:
    query, gallery, _, _ = clustered(5, num_query=7, num_gallery=25)
    from_numpy = k_reciprocal_rerank(query, gallery, k1=6, k2=3)
    from_torch = k_reciprocal_rerank(torch.from_numpy(query), torch.from_numpy(gallery), k1=6, k2=3)
    from_float64 = k_reciprocal_rerank(query.astype(np.float64), gallery, k1=6, k2=3)
    assert from_numpy.shape == (7, 25)
    assert from_numpy.dtype == torch.float32
    assert torch.equal(from_numpy, from_torch)
    assert torch.equal(from_numpy, from_float64)
    assert float(from_numpy.min()) >= 0.0 and float(from_numpy.max()) <= 1.0


def test_does_not_modify_or_require_grad_inputs() -> None:
    query, gallery, _, _ = clustered(6, num_query=5, num_gallery=12)
    q = torch.from_numpy(query).requires_grad_()
    g = torch.from_numpy(gallery.copy())
    before = g.clone()
    out = k_reciprocal_rerank(q, g, k1=4, k2=2)
    assert not out.requires_grad
    assert torch.equal(g, before)


def test_chunk_size_does_not_change_result() -> None:
    query, gallery = with_duplicates(7)
    results = [
        k_reciprocal_rerank(query, gallery, k1=8, k2=3, metric="euclidean", chunk_size=size)
        for size in (None, 64, 9, 4)
    ]
    for other in results[1:]:
        assert torch.equal(results[0], other)

    query, gallery, _, _ = clustered(8)
    dense = k_reciprocal_rerank(query, gallery, chunk_size=None)
    for size in (5, 31):
        chunked = k_reciprocal_rerank(query, gallery, chunk_size=size)
        np.testing.assert_allclose(chunked.numpy(), dense.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_internal_chunking_does_not_change_result(
    monkeypatch: pytest.MonkeyPatch, ties: bool, precision: str
) -> None:
    query, gallery = with_duplicates(9) if ties else clustered(9)[:2]
    expected = k_reciprocal_rerank(query, gallery, metric="euclidean", precision=precision)
    monkeypatch.setattr(reranking, "_PAIR_BUDGET", 300)
    monkeypatch.setattr(reranking, "_ROW_CHUNK", 7)
    monkeypatch.setattr(reranking, "_PAIR_CHUNK", 5)
    monkeypatch.setattr(reranking, "_PIECE_ENTRIES", 40)
    monkeypatch.setattr(reranking, "_FULL_ROW_ENTRIES", 200)
    got = k_reciprocal_rerank(query, gallery, metric="euclidean", precision=precision)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-6)


def test_budget_chunks_respect_budget_and_row_cap() -> None:
    costs = torch.tensor([3, 3, 3, 10, 1, 1, 1, 1])
    assert reranking._budget_chunks(costs, budget=6, max_rows=3) == [
        (0, 2),
        (2, 3),
        (3, 4),
        (4, 7),
        (7, 8),
    ]


def test_cosine_equals_euclidean_on_normalised_embeddings() -> None:
    query, gallery, _, _ = clustered(10)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    np.testing.assert_allclose(
        k_reciprocal_rerank(query, gallery, metric="cosine").numpy(),
        k_reciprocal_rerank(query, gallery, metric="euclidean").numpy(),
        rtol=0,
        atol=1e-5,
    )


def test_reranking_improves_map_on_clustered_data() -> None:
    query, gallery, q_ids, g_ids = clustered(11, num_query=40, num_gallery=400, dim=12, num_ids=20)
    baseline = ((query[:, None] - gallery[None]) ** 2).sum(axis=2)
    reranked = k_reciprocal_rerank(query, gallery, metric="euclidean").numpy()
    before = mean_average_precision(baseline, q_ids, g_ids)
    after = mean_average_precision(reranked, q_ids, g_ids)
    # Measured: 0.54 -> 0.68.
    assert after > before + 0.08, (before, after)


def test_progress_bars(capsys: pytest.CaptureFixture[str]) -> None:
    query, gallery, _, _ = clustered(12, num_query=4, num_gallery=10)
    k_reciprocal_rerank(query, gallery, progress=True)
    err = capsys.readouterr().err
    assert "re-ranking: distances" in err and "re-ranking: jaccard" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    query, gallery, _, _ = clustered(13)
    cpu = k_reciprocal_rerank(query, gallery, metric="euclidean")
    gpu = k_reciprocal_rerank(
        torch.from_numpy(query).cuda(), torch.from_numpy(gallery).cuda(), metric="euclidean"
    )
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=0, atol=1e-5)


GOOD = np.zeros((2, 4), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gallery_embeddings": np.zeros((3, 5))}, ValueError, "same embedding size"),
        ({"query_embeddings": np.zeros((0, 4))}, ValueError, "non-empty"),
        ({"gallery_embeddings": np.zeros((0, 4))}, ValueError, "non-empty"),
        (
            {"query_embeddings": np.zeros((2, 0)), "gallery_embeddings": np.zeros((2, 0))},
            ValueError,
            "non-empty",
        ),
        ({"query_embeddings": np.zeros(4)}, ValueError, "2-D"),
        ({"gallery_embeddings": np.zeros((1, 2, 4))}, ValueError, "2-D"),
        ({"query_embeddings": np.array([[np.nan, 0, 0, 0]])}, ValueError, "NaN or infinite"),
        ({"query_embeddings": [[0.0, 0.0, 0.0, 0.0]]}, TypeError, "torch.Tensor or numpy"),
        ({"query_embeddings": np.zeros((2, 4), dtype=bool)}, TypeError, "real numbers"),
        ({"query_embeddings": torch.zeros(2, 4, dtype=torch.complex64)}, TypeError, "real"),
        ({"k1": 0}, ValueError, "k1 must be >= 1, got 0"),
        ({"k1": 2.5}, ValueError, "k1 must be an integer"),
        ({"k1": True}, ValueError, "k1 must be an integer"),
        ({"k2": 0}, ValueError, "k2 must be >= 1"),
        ({"k1": 4, "k2": 6}, ValueError, "k2 must be at most k1 \\+ 1 = 5, got 6"),
        ({"lambda_value": -0.1}, ValueError, "lambda_value must be in \\[0, 1\\], got -0.1"),
        ({"lambda_value": 1.5}, ValueError, "lambda_value must be in \\[0, 1\\], got 1.5"),
        ({"lambda_value": "0.3"}, ValueError, "lambda_value must be a number"),
        ({"metric": "manhattan"}, ValueError, "metric must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        ({"metric": "cosine"}, ValueError, "are zero vectors"),
        ({"precision": "float16"}, ValueError, "precision must be one of"),
    ],
)
def test_invalid_inputs(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {
        "query_embeddings": GOOD,
        "gallery_embeddings": np.ones((3, 4), dtype=np.float32),
        "metric": "euclidean",
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        k_reciprocal_rerank(args.pop("query_embeddings"), args.pop("gallery_embeddings"), **args)


def finite_bfloat16_values() -> torch.Tensor:
    """Every finite bfloat16 value (both zeros included), as a bfloat16 tensor."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.bfloat16)
    return values[torch.isfinite(values)]


def test_order_keys_order_like_the_values_and_invert() -> None:
    values = finite_bfloat16_values()
    keys = order_keys_(values.view(torch.int16).clone())
    order = torch.argsort(keys)
    ascending = values[order].float()
    assert bool((ascending[1:] >= ascending[:-1]).all())
    # -0 sorts just below +0, so the order is strict apart from that pair.
    zero = ascending == 0
    assert int(zero.sum()) == 2 and bool((ascending[1:] > ascending[:-1])[~zero[1:]].all())
    restored = order_keys_(keys.clone())
    assert torch.equal(restored, values.view(torch.int16))
    assert torch.equal(reranking._keys_to_float(keys), values.float())


def test_limit_keys_select_exactly_the_values_within_the_limit() -> None:
    """``key <= _keys_at_most(limit)`` iff ``p <= limit`` and ``key >= _keys_at_least(limit)``
    iff ``p >= limit``, for every finite bfloat16 ``p``, including limits that are zero
    (either sign), tiny, infinite, representable or between two bfloat16 values."""
    values = finite_bfloat16_values()
    keys = order_keys_(values.view(torch.int16).clone())
    p = values.double()
    limits = torch.tensor(
        [0.0, -0.0, 1e-40, -1e-40, 1e-45, -1e-45, torch.inf, -torch.inf, 3.0, -3.0,
         3.0078125, 3.01, -3.01, 1e30, -1e30, 3.3e38, -3.3e38], dtype=torch.float64,
    )
    generator = torch.Generator().manual_seed(0)
    random_limits = torch.randn(50, dtype=torch.float64, generator=generator) * 1e3
    limits = torch.cat([limits, random_limits])
    at_most, at_least = reranking._keys_at_most(limits), reranking._keys_at_least(limits)
    for limit, most, least in zip(limits, at_most, at_least, strict=True):
        assert torch.equal(keys <= most, p <= limit), float(limit)
        assert torch.equal(keys >= least, p >= limit), float(limit)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (16, 8)])
def test_true_positions_match_nonzero_and_ignore_the_padding(shape: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    size = shape[0] * shape[1]
    mask_buf = torch.ones(reranking._padded(size) + 8, dtype=torch.bool)
    mask = mask_buf[:size].view(shape)
    mask.copy_(torch.rand(shape, generator=generator) < 0.3)
    rows, cols = reranking._true_positions(mask, mask_buf)
    expected = torch.nonzero(mask)
    assert torch.equal(rows, expected[:, 0]) and torch.equal(cols, expected[:, 1])


def test_typical_near_distance_is_the_kth_distance_on_a_full_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the sample holds every item, the estimate is the median k-th distance exactly;
    on a subsample it stays close to it."""
    query, gallery, _, _ = clustered(3, num_query=0, num_gallery=200, dim=8)
    features = reranking._prepare_features(torch.from_numpy(gallery), "euclidean")
    items = torch.arange(len(features))
    sq_norms = reranking._pair_dots(features, items, items)
    dist = torch.cdist(features.double(), features.double()) ** 2
    kth = dist.kthvalue(5, dim=1).values
    estimate = reranking._typical_near_distance(features, sq_norms, 5)
    assert estimate == pytest.approx(float(kth.median()), rel=1e-4)
    monkeypatch.setattr(reranking, "_SAMPLE_ROWS", 50)
    monkeypatch.setattr(reranking, "_SAMPLE_COLS", 100)
    subsampled = reranking._typical_near_distance(features, sq_norms, 5)
    assert float(kth.quantile(0.1)) < subsampled < float(kth.quantile(0.9))


def test_limit_grid_combines_row_and_column_limits() -> None:
    rows, cols = torch.tensor([1.0, 5.0, 3.0]), torch.tensor([4.0, 2.0])
    out = torch.empty(3, 2)
    grid = reranking._limit_grid(rows, cols, torch.maximum, out)
    assert grid.data_ptr() == out.data_ptr()
    assert torch.equal(grid, torch.tensor([[4.0, 2.0], [5.0, 5.0], [4.0, 3.0]]))
    assert torch.equal(reranking._limit_grid(rows, None, torch.maximum, out), rows.unsqueeze(1))


@pytest.mark.parametrize("chunk_size", [4, 9])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_reference_when_every_distance_ties(chunk_size: int, precision: str) -> None:
    """Equidistant points (scaled one-hot vectors, some repeated): distances tie at the
    k1 + 1 boundary and at the row maximum, in every panel of the schedule. With 64 items
    the centring shift is a multiple of 1/32, so the ties stay exact in float32 and in
    bfloat16."""
    rng = np.random.default_rng(4)
    points = 2.0 * np.eye(24, dtype=np.float32)
    gallery = points[rng.integers(24, size=48)]
    query = points[rng.integers(24, size=16)]
    expected = reference_rerank(query, gallery, 7, 3, 0.3)
    got = k_reciprocal_rerank(
        query, gallery, k1=7, k2=3, metric="euclidean", chunk_size=chunk_size,
        precision=precision,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("diagonal", [False, True])
def test_near_or_far_hits_are_the_entries_within_a_row_or_column_limit(diagonal: bool) -> None:
    generator = torch.Generator().manual_seed(5)
    num_items, rows, cols = 20, slice(3, 9), slice(3, 9) if diagonal else slice(11, 18)
    keys = torch.randint(-50, 50, (6, 6 if diagonal else 7), generator=generator)
    keys = keys.to(torch.int16)
    near = torch.randint(-60, 0, (num_items,), generator=generator).to(torch.int16)
    far = torch.randint(0, 60, (num_items,), generator=generator).to(torch.int16)
    size = keys.numel()
    grid_bufs = tuple(torch.empty(size, dtype=torch.int16) for _ in range(2))
    mask_buf = torch.empty(2, reranking._padded(size), dtype=torch.bool)
    i, j = reranking._near_or_far_hits(
        keys, (near, far), rows, None if diagonal else cols, grid_bufs, mask_buf
    )
    expected = (keys <= near[rows].unsqueeze(1)) | (keys >= far[rows].unsqueeze(1))
    if not diagonal:
        expected |= (keys <= near[cols].unsqueeze(0)) | (keys >= far[cols].unsqueeze(0))
    found = torch.zeros_like(expected)
    found[i, j] = True
    assert torch.equal(found, expected) and 0 < i.numel() < size


def test_benchmark_script_tiny_run_compares_both_precisions() -> None:
    """``benchmarks/bench_reranking.py`` runs end to end (both variants of ours, each in a
    child process) and reports them equal."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reranking.py"
    command = [sys.executable, str(script), "--queries", "6", "--gallery", "40", "--ids", "5",
               "--dim", "8", "--skip-baseline", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = [line.split()[:2] for line in lines if line.startswith(("ours ", "float32 "))]
    assert [row for row in rows if row[1] != "/"] == [["ours", "6x40"], ["float32", "6x40"]]
    assert "entries differing by more than 1e-5: 0.00e+00" in result.stdout
