"""Ranking metrics against a plain per-query reference of the Market-1501 protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_transformers.evaluation import (
    RankingResult,
    evaluate_distance_matrix,
    evaluate_ranking,
    pairwise_distance,
    ranking,
)
from reid_transformers.evaluation.ranking import (
    _CandidateDistances,
    _GallerySide,
    resolve_precision,
)


def reference_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The standard definition, one query at a time, written as plainly as possible."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp, per_query = [], [], [], []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        keep = []
        for j in order:
            same_id_same_cam = g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]
            if same_id_same_cam or g_pids[j] == -1:
                continue
            keep.append(j)
        matches = np.array([1 if g_pids[j] == q_pids[i] else 0 for j in keep])
        if matches.sum() == 0:
            per_query.append(np.nan)
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank].tolist() + [1] * (max_rank - len(cmc[:max_rank])))
        num_rel = matches.sum()
        hits = 0
        precisions = []
        for rank, m in enumerate(matches, start=1):
            if m:
                hits += 1
                precisions.append(hits / rank)
        ap = sum(precisions) / num_rel
        all_ap.append(ap)
        per_query.append(ap)
        hardest = np.nonzero(matches)[0].max() + 1
        all_inp.append(num_rel / hardest)
    return {
        "cmc": np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0),
        "mAP": np.mean(all_ap),
        "mINP": np.mean(all_inp),
        "valid": len(all_ap),
        "skipped": num_q - len(all_ap),
        "per_query": np.asarray(per_query),
    }


def make_problem(seed, num_q=40, num_g=300, num_ids=25, num_cams=4, dim=16, noise=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim))
    q_pids = rng.integers(1, num_ids + 1, size=num_q)
    g_pids = rng.integers(0, num_ids + 1, size=num_g)  # 0 = distractors
    q_camids = rng.integers(0, num_cams, size=num_q)
    g_camids = rng.integers(0, num_cams, size=num_g)
    q = centres[q_pids] + noise * rng.normal(size=(num_q, dim))
    g = centres[g_pids] + noise * rng.normal(size=(num_g, dim))
    return q.astype(np.float32), g.astype(np.float32), q_pids, g_pids, q_camids, g_camids


def assert_matches_reference(result: RankingResult, ref, per_query=False):
    np.testing.assert_allclose(result.cmc, ref["cmc"], atol=1e-6)
    assert abs(result.mean_ap - ref["mAP"]) < 1e-6
    assert abs(result.mean_inp - ref["mINP"]) < 1e-6
    assert result.num_valid_queries == ref["valid"]
    assert result.num_skipped_queries == ref["skipped"]
    if per_query:
        np.testing.assert_allclose(result.average_precision, ref["per_query"], atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("noise", [0.3, 1.0, 5.0])
def test_distance_matrix_matches_reference(seed, noise):
    q, g, qp, gp, qc, gc = make_problem(seed, noise=noise)
    dist = pairwise_distance(q, g).numpy()
    ref = reference_metrics(dist, qp, gp, qc, gc)
    result = evaluate_distance_matrix(dist, qp, gp, qc, gc, return_per_query=True)
    assert_matches_reference(result, ref, per_query=True)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_embeddings_match_distance_matrix_path(metric):
    q, g, qp, gp, qc, gc = make_problem(7)
    dist = pairwise_distance(q, g, metric=metric).double().numpy()
    ref = reference_metrics(dist, qp, gp, qc, gc)
    result = evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, chunk_size=7)
    assert_matches_reference(result, ref)


def test_ties_are_broken_by_gallery_index():
    rng = np.random.default_rng(0)
    # Distances drawn from 3 values: nearly every comparison is a tie.
    dist = rng.integers(0, 3, size=(30, 80)).astype(np.float32)
    qp = rng.integers(1, 6, size=30)
    gp = rng.integers(1, 6, size=80)
    qc = rng.integers(0, 2, size=30)
    gc = rng.integers(0, 2, size=80)
    ref = reference_metrics(dist, qp, gp, qc, gc)
    assert_matches_reference(evaluate_distance_matrix(dist, qp, gp, qc, gc), ref)


def test_negative_distances_and_signed_zero_ties():
    rng = np.random.default_rng(1)
    # Negated similarities, with +0.0 and -0.0 mixed in: they are equal and tie by index.
    dist = -rng.integers(-2, 3, size=(25, 60)).astype(np.float32) * 0.5
    dist[dist == 0] = np.where(rng.random((dist == 0).sum()) < 0.5, -0.0, 0.0)
    qp, gp = rng.integers(1, 5, size=25), rng.integers(1, 5, size=60)
    qc, gc = rng.integers(0, 3, size=25), rng.integers(0, 3, size=60)
    ref = reference_metrics(dist, qp, gp, qc, gc)
    assert_matches_reference(evaluate_distance_matrix(dist, qp, gp, qc, gc), ref)


def test_query_without_positive_is_skipped_and_counted():
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    qp = np.array([1, 2])
    gp = np.array([1, 2, 1])
    qc = np.array([0, 0])
    gc = np.array([1, 0, 1])  # query 2's only same-id item is in its own camera
    result = evaluate_distance_matrix(dist, qp, gp, qc, gc, return_per_query=True)
    assert result.num_valid_queries == 1
    assert result.num_skipped_queries == 1
    assert result.mean_ap == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(result.average_precision[1])


def test_one_camera_only_skips_everything_with_clear_error():
    dist = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="no query has a positive"):
        evaluate_distance_matrix(dist, [1, 2, 1, 2], [1, 2, 1, 2, 1, 2], [0] * 4, [0] * 6)


def test_gallery_smaller_than_max_rank_clips_cmc():
    q, g, qp, gp, qc, gc = make_problem(3, num_q=10, num_g=12, num_ids=3)
    dist = pairwise_distance(q, g).numpy()
    result = evaluate_distance_matrix(dist, qp, gp, qc, gc, max_rank=50)
    assert result.cmc.shape == (12,)
    assert result.cmc[-1] == pytest.approx(1.0)
    assert_matches_reference(result, reference_metrics(dist, qp, gp, qc, gc))


def test_distractors_are_negatives_and_junk_is_ignored():
    # Gallery: a distractor (pid 0) closest, then junk (-1), then the true match.
    dist = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    result = evaluate_distance_matrix(dist, [5], [0, -1, 5], [0], [1, 1, 1])
    assert result.rank(1) == 0.0
    assert result.rank(2) == 1.0  # junk does not count as a rank
    assert result.mean_ap == pytest.approx(0.5)
    assert result.mean_inp == pytest.approx(0.5)


def test_hand_computed_example():
    # Valid order for the query: pos, neg, pos, neg, pos -> AP = (1/1 + 2/3 + 3/5) / 3.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.05]], dtype=np.float32)
    gp = [7, 3, 7, 3, 7, 7]
    gc = [1, 1, 2, 1, 2, 0]  # the last item: same id, same camera -> removed
    result = evaluate_distance_matrix(dist, [7], gp, [0], gc)
    assert result.mean_ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert result.mean_inp == pytest.approx(3 / 5)
    assert result.rank(1) == 1.0


def test_chunking_does_not_change_results():
    q, g, qp, gp, qc, gc = make_problem(11, num_q=50)
    full = evaluate_ranking(q, g, qp, gp, qc, gc, return_per_query=True)
    for chunk in (1, 3, 17):
        part = evaluate_ranking(q, g, qp, gp, qc, gc, chunk_size=chunk, return_per_query=True)
        np.testing.assert_array_equal(part.cmc, full.cmc)
        np.testing.assert_array_equal(part.average_precision, full.average_precision)


def test_torch_inputs_and_as_dict():
    q, g, qp, gp, qc, gc = make_problem(5)
    result = evaluate_ranking(
        torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(qp), torch.from_numpy(gp),
        torch.from_numpy(qc), torch.from_numpy(gc),
    )
    d = result.as_dict(ranks=(1, 5))
    assert set(d) == {"mAP", "mINP", "rank-1", "rank-5", "num_valid_queries",
                      "num_skipped_queries"}
    assert d["rank-1"] == result.cmc[0]
    with pytest.raises(ValueError, match="rank k must be >= 1"):
        result.rank(0)


def test_pairwise_distance_definitions():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    g = rng.normal(size=(7, 8)).astype(np.float32)
    expected = np.linalg.norm(q[:, None] - g[None], axis=2)
    np.testing.assert_allclose(
        pairwise_distance(q, g, metric="euclidean").numpy(), expected, rtol=1e-5, atol=1e-5
    )
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(pairwise_distance(q, g).numpy(), 1 - qn @ gn.T, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_pids": [1, 2]}, "query_pids has 2 entries but 3"),
        ({"gallery_camids": [[0, 1, 2, 3]]}, "gallery_camids must be 1-D"),
        ({"query_pids": [1.0, 2.0, 3.0]}, "query_pids must hold integers"),
        ({"max_rank": 0}, "max_rank must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"metric": "manhattan"}, "metric must be one of"),
        ({"precision": "float16"}, "precision must be one of"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    rng = np.random.default_rng(0)
    args = {
        "query_embeddings": rng.normal(size=(3, 4)),
        "gallery_embeddings": rng.normal(size=(4, 4)),
        "query_pids": [1, 2, 3],
        "gallery_pids": [1, 2, 3, 1],
        "query_camids": [0, 0, 0],
        "gallery_camids": [1, 1, 1, 1],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(**args)


def test_dimension_mismatch_and_non_finite_values():
    with pytest.raises(ValueError, match="differ in dimension: 4 vs 5"):
        evaluate_ranking(np.zeros((2, 4)), np.zeros((3, 5)), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    bad = np.ones((2, 4))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="query_embeddings contain NaN"):
        evaluate_ranking(bad, np.ones((3, 4)), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="distances contain NaN"):
        evaluate_distance_matrix(np.full((2, 3), np.nan), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="at least one query"):
        evaluate_distance_matrix(np.zeros((0, 3)), [], [1, 2, 3], [], [1, 1, 1])


# --- zero vectors under cosine distance (issue 13, item 16) --------------------------------


def _zero_vector_error(call) -> str:
    with pytest.raises(ValueError, match="are zero vectors") as excinfo:
        call()
    return str(excinfo.value)


@pytest.mark.parametrize("side", ["query", "gallery"])
def test_zero_vector_under_cosine_is_rejected_like_the_gallery_index(side):
    from reid_transformers.evaluation import ReIDMetric
    from reid_transformers.retrieval import GalleryIndex

    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 4)).astype(np.float32)
    gallery = rng.normal(size=(4, 4)).astype(np.float32)
    (query if side == "query" else gallery)[2] = 0.0
    labels = ([1, 2, 3], [1, 2, 3, 1], [0, 0, 0], [1, 1, 1, 1])
    name = f"{side}_embeddings"
    message = _zero_vector_error(lambda: evaluate_ranking(query, gallery, *labels, metric="cosine"))
    assert message.startswith(f"{name} rows [2] are zero vectors")
    # torch input, a chunk that does not start at row 0, the distance matrix and the metric:
    # the same rule and the same words everywhere.
    assert message == _zero_vector_error(
        lambda: evaluate_ranking(
            torch.from_numpy(query), gallery, *labels, metric="cosine", chunk_size=2
        )
    )
    assert message == _zero_vector_error(lambda: pairwise_distance(query, gallery, "cosine"))
    assert message == _zero_vector_error(
        lambda: ReIDMetric().compute(
            distance="cosine",
            query_embeddings=query,
            gallery_embeddings=gallery,
            query_pids=labels[0],
            gallery_pids=labels[1],
            query_camids=labels[2],
            gallery_camids=labels[3],
        )
    )
    index = GalleryIndex(dim=4, metric="cosine")
    assert message.replace(name, "embeddings") == _zero_vector_error(
        lambda: index.add(query if side == "query" else gallery)
    )
    # Euclidean distance is defined for zero vectors.
    evaluate_ranking(query, gallery, *labels, metric="euclidean")


def test_zero_vector_rows_are_listed_up_to_ten():
    gallery = np.zeros((12, 4), dtype=np.float32)
    gallery[0] = 1.0
    message = _zero_vector_error(
        lambda: evaluate_ranking(
            np.ones((1, 4)), gallery, [1], [1] * 12, [0], [1] * 12, metric="cosine"
        )
    )
    assert "rows [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] ... are zero vectors" in message


# --- precision="bfloat16": candidates, a rigorous bound, float32 settlement (issue 16) ------


def assert_identical(fast: RankingResult, exact: RankingResult) -> None:
    """Bit-for-bit the same metrics, per-query AP included."""
    np.testing.assert_array_equal(fast.cmc, exact.cmc)
    np.testing.assert_array_equal(fast.average_precision, exact.average_precision)
    assert (fast.mean_ap, fast.mean_inp) == (exact.mean_ap, exact.mean_inp)
    assert fast.num_valid_queries == exact.num_valid_queries
    assert fast.num_skipped_queries == exact.num_skipped_queries


def both_precisions(q, g, qp, gp, qc, gc, **kwargs) -> tuple[RankingResult, RankingResult]:
    return tuple(
        evaluate_ranking(q, g, qp, gp, qc, gc, precision=p, return_per_query=True, **kwargs)
        for p in ("bfloat16", "float32")
    )


def random_rows(rng, num_rows, dim, scale=1.0) -> torch.Tensor:
    return torch.from_numpy(rng.normal(size=(num_rows, dim)).astype(np.float32) * scale)


def random_problem(seed, num_gallery, num_query, dim, metric):
    """``(rng, gallery side, query block)`` of random rows."""
    rng = np.random.default_rng(seed)
    side = _GallerySide(random_rows(rng, num_gallery, dim), metric)
    return rng, side, side.queries(random_rows(rng, num_query, dim))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed, noise, chunk_size", [(0, 0.3, None), (1, 1.0, 17), (2, 5.0, 40)])
def test_bfloat16_precision_is_identical_on_random_data(metric, seed, noise, chunk_size):
    q, g, qp, gp, qc, gc = make_problem(seed, noise=noise, dim=48)
    assert_identical(*both_precisions(q, g, qp, gp, qc, gc, metric=metric,
                                      chunk_size=chunk_size))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_bfloat16_precision_is_identical_on_ties(metric):
    q, g, qp, gp, qc, gc = make_problem(3, num_g=100, dim=24)
    # Duplicate gallery rows (exactly equal distances, broken by index), each query also
    # in the gallery, and one item repeated many times.
    g = np.concatenate([g, g[:60], q[:20], np.repeat(g[:1], 30, axis=0)])
    gp = np.concatenate([gp, gp[:60], qp[:20], np.repeat(gp[:1], 30)])
    gc = np.concatenate([gc, (gc[:60] + 1) % 4, (qc[:20] + 1) % 4, np.arange(30) % 4])
    assert_identical(*both_precisions(q, g, qp, gp, qc, gc, metric=metric))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("scale", [1.0, 3e4])
def test_bfloat16_precision_is_identical_on_adversarial_data(metric, scale, monkeypatch):
    settled = []
    settle = ranking._settle
    monkeypatch.setattr(ranking, "_settle", lambda side, block, rows, cols, order: (
        settled.append(len(rows)), settle(side, block, rows, cols, order))[1])
    rng = np.random.default_rng(4)
    q, g, qp, gp, qc, gc = make_problem(4, num_q=20, num_g=80, num_ids=5, dim=32)
    # Next to every positive, negatives moved by far less than the bfloat16 error bound
    # (so only settlement can order them), some exactly at the positive's distance.
    positives = np.flatnonzero(np.isin(gp, qp))
    near = g[positives] * (1 + rng.choice([0.0, 1e-6, -1e-6, 3e-4, -3e-4],
                                          size=(len(positives), 1)))
    near += rng.normal(size=near.shape) * rng.choice([0.0, 1e-5], size=(len(near), 1))
    g = np.concatenate([g, near]).astype(np.float32) * scale
    gp = np.concatenate([gp, np.zeros(len(near), dtype=gp.dtype)])  # distractors
    gc = np.concatenate([gc, rng.integers(0, 4, size=len(near))])
    q = q * scale
    assert_identical(*both_precisions(q, g, qp, gp, qc, gc, metric=metric, chunk_size=16))
    assert sum(settled) > len(near)  # the near pairs were settled, not decided by bfloat16


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_bfloat16_precision_is_identical_on_degenerate_embeddings(metric):
    rng = np.random.default_rng(5)
    qp, gp = rng.integers(1, 4, size=10), rng.integers(1, 4, size=70)
    qc, gc = rng.integers(0, 3, size=10), rng.integers(0, 3, size=70)
    # Zero variance: every gallery row the same vector (all distances tie).
    same = np.tile(rng.normal(size=(1, 16)), (70, 1)).astype(np.float32)
    q = rng.normal(size=(10, 16)).astype(np.float32)
    assert_identical(*both_precisions(q, same, qp, gp, qc, gc, metric=metric))
    # Components below bfloat16's normal range and a few very large ones.
    tiny = rng.normal(size=(70, 16)).astype(np.float32)
    tiny[:, :8] *= 1e-39
    tiny[::7, 8] = 1e30 if metric == "cosine" else 1e15
    assert_identical(*both_precisions(q, tiny, qp, gp, qc, gc, metric=metric))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_bfloat16_error_bound_holds(metric, scale):
    # The bound behind the exactness argument: |candidate - reference| <= margin + w |p|.
    rng = np.random.default_rng(6)
    g = random_rows(rng, 300, 96, scale)
    q = random_rows(rng, 40, 96, scale)
    q[:10] = g[:10] * (1 + 1e-3)  # near-duplicates: the worst case for cancellation
    side = _GallerySide(g, metric)
    candidates = _CandidateDistances(side)
    block = side.queries(q)
    products, margin, cap = candidates.products(block)
    everything = torch.full((len(q),), math.inf)
    rows, cols, values = candidates.within(products, block, everything, products.numel())
    assert len(values) == products.numel()
    dist = values.reshape(products.shape)
    reference = side.distances(block)
    bound = candidates.pair_bounds(margin.unsqueeze(1), products, dist)
    assert bool(((dist.double() - reference.double()).abs() <= bound).all())
    assert bool((products.double().abs() <= cap.unsqueeze(1)).all())
    # ... and it is not vacuous: far below the spread of the distances.
    assert float(bound.max()) < 0.1 * float(reference.std())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_settlement_gemm_reproduces_the_reference_bits(metric):
    # Settlement relies on this property of the float32 GEMM: with 4, 8 or >= 12 rows and
    # >= 16 columns, an element's bits do not depend on which other rows and columns are
    # multiplied (5 to 7 and 9 to 11 rows give other bits).
    rng, side, block = random_problem(7, 500, 50, 256, metric)
    reference = side.distances(block)
    for rows, cols, shuffled in [(16, 64, False), (16, 300, True), (4, 64, False),
                                 (8, 64, True), (12, 64, True), (50, 100, False)]:
        start = int(rng.integers(0, 50 - rows + 1))
        # Settlement groups queries by identity: any rows, in any order.
        row_index = (torch.from_numpy(rng.permutation(50)[:rows]) if shuffled
                     else torch.arange(start, start + rows))
        columns = torch.from_numpy(np.sort(rng.choice(500, size=cols, replace=False)))
        settled = side.distances(block, rows=row_index, columns=columns)
        assert torch.equal(settled, reference[row_index][:, columns])


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_picks_as_documented(native, monkeypatch):
    monkeypatch.setattr(ranking, "native_bfloat16_matmul", lambda: native)
    queries, values = ranking._AUTO_MIN_QUERIES, ranking._AUTO_MIN_GALLERY_VALUES
    # MSMT17 and Market-1501 galleries at 2048-d and 768-d take bfloat16, 256-d float32.
    fast = "bfloat16" if native else "float32"
    assert resolve_precision("auto", queries, 82_161, 2048) == fast
    assert resolve_precision("auto", queries, 15_913, 2048) == fast
    assert resolve_precision("auto", queries, 15_913, 768) == fast
    assert resolve_precision("auto", queries, 15_913, 256) == "float32"
    assert resolve_precision("auto", queries, values // 2, 2) == fast
    assert resolve_precision("auto", queries, values - 1, 1) == "float32"
    assert resolve_precision("auto", queries - 1, values, 1) == "float32"
    for explicit in ("bfloat16", "float32"):
        assert resolve_precision(explicit, 1, 1, 1) == explicit
    with pytest.raises(ValueError, match="precision must be one of .*'half'"):
        resolve_precision("half", queries, values, 1)


def test_auto_precision_is_the_default_and_equals_float32(monkeypatch):
    # Thresholds lowered so this small problem takes the bfloat16 path under "auto".
    monkeypatch.setattr(ranking, "_AUTO_MIN_QUERIES", 1)
    monkeypatch.setattr(ranking, "_AUTO_MIN_GALLERY_VALUES", 1)
    monkeypatch.setattr(ranking, "native_bfloat16_matmul", lambda: True)
    resolved = []
    resolve = ranking.resolve_precision
    monkeypatch.setattr(ranking, "resolve_precision",
                        lambda *args: resolved.append(resolve(*args)) or resolved[-1])
    q, g, qp, gp, qc, gc = make_problem(8, dim=40)
    default = evaluate_ranking(q, g, qp, gp, qc, gc, return_per_query=True)
    assert resolved == ["bfloat16"]
    exact = evaluate_ranking(q, g, qp, gp, qc, gc, precision="float32", return_per_query=True)
    assert_identical(default, exact)


def test_native_bfloat16_matmul_follows_the_cpu_flags():
    # oneDNN multiplies bfloat16 natively exactly where the CPU has AVX-512 BF16 or AMX.
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or not torch.backends.mkldnn.is_available():
        pytest.skip("needs Linux CPU flags and oneDNN")
    flags = set(cpuinfo.read_text().split())
    assert ranking.native_bfloat16_matmul() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_candidate_scan_finds_exactly_the_pairs_within_the_threshold(metric):
    # The cosine scan reads bfloat16 products against a floor, then tests exactly: it must
    # return the same pairs as a dense float32 comparison, including pairs exactly at the
    # threshold and rows whose threshold is -inf or +inf.
    rng, side, block = random_problem(8, 400, 12, 48, metric)
    candidates = _CandidateDistances(side)
    products, _, _ = candidates.products(block)
    if metric == "cosine":
        dense = 1.0 - products.float()
    else:
        dense = (products.float() * -2.0 + side.sq_norm) + block.sq_norm
        dense = dense.clamp(min=0)
    threshold = dense[torch.arange(12), torch.from_numpy(rng.integers(0, 400, size=12))]
    threshold[0], threshold[1] = -math.inf, math.inf
    rows, cols, values = candidates.within(products, block, threshold, products.numel())
    expected_rows, expected_cols = (dense <= threshold.unsqueeze(1)).nonzero(as_tuple=True)
    assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)
    assert torch.equal(values, dense[rows, cols])
    assert 0 < len(rows) < products.numel()
    assert candidates.within(products, block, threshold, limit=len(rows) - 1) is None


def test_column_pieces_are_never_narrower_than_the_minimum():
    assert list(ranking._column_pieces(64)) == [(0, 64)]
    assert list(ranking._column_pieces(512)) == [(0, 512)]
    assert list(ranking._column_pieces(570)) == [(0, 570)]  # a 58-column tail joins
    assert list(ranking._column_pieces(600)) == [(0, 512), (512, 600)]
    assert list(ranking._column_pieces(1060)) == [(0, 512), (512, 1060)]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_settle_returns_the_reference_bits_for_any_pairs(metric):
    # Groups of query rows in any order whose column unions span several pieces (and a
    # tail joined to the last piece); a block of exactly one group.
    rng = np.random.default_rng(9)
    g = random_rows(rng, 1500, 64)
    q = random_rows(rng, 40, 64)
    side = _GallerySide(g, metric)
    for num_queries in (40, 16):
        row_order = torch.from_numpy(rng.permutation(num_queries))
        block = side.queries(q[:num_queries])
        reference = side.distances(block)
        rows = torch.from_numpy(rng.integers(0, num_queries, size=6000))
        cols = torch.from_numpy(rng.integers(0, 1500, size=6000))
        values = ranking._settle(side, block, rows, cols, row_order)
        assert torch.equal(values, reference[rows, cols])


def test_blocks_smaller_than_a_settlement_group_use_the_reference(monkeypatch):
    # MKL's float32 GEMM gives 1-3, 5-7 and 9-11 rows other bits than a 16-row group, so
    # such blocks (here: every chunk) must take the reference's own call.
    def fail(*args, **kwargs):
        raise AssertionError("a block smaller than one settlement group was settled")

    monkeypatch.setattr(ranking, "_settled_metrics", fail)
    q, g, qp, gp, qc, gc = make_problem(5, dim=24)
    assert_identical(*both_precisions(q, g, qp, gp, qc, gc, chunk_size=15))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_bfloat16_precision_ranks_negatives_tied_with_positives(metric):
    # A distractor copy of every gallery item, half before it (ranked ahead of it on the
    # tie, the hardest positives included) and half after it.
    q, g, qp, gp, qc, gc = make_problem(6, num_g=120, dim=24)
    g = np.concatenate([g[:60], g, g[60:]])
    gp = np.concatenate([np.zeros(60, dtype=gp.dtype), gp, np.zeros(60, dtype=gp.dtype)])
    gc = np.concatenate([gc[:60], gc, gc[60:]])
    fast, exact = both_precisions(q, g, qp, gp, qc, gc, metric=metric, chunk_size=20)
    assert_identical(fast, exact)
    assert exact.mean_ap < both_precisions(q, g[60:], qp, gp[60:], qc, gc[60:],
                                           metric=metric)[1].mean_ap


def test_bfloat16_precision_falls_back_to_the_reference_for_useless_embeddings(monkeypatch):
    # Random embeddings put most of the gallery ahead of some positive: the chunk is
    # computed densely (only the positives are settled) and the metrics stay identical.
    settled = []
    settle = ranking._settle
    monkeypatch.setattr(ranking, "_settle", lambda side, block, rows, cols, order: (
        settled.append(len(rows)), settle(side, block, rows, cols, order))[1])
    q, g, qp, gp, qc, gc = make_problem(7, noise=50.0, dim=32)
    fast, exact = both_precisions(q, g, qp, gp, qc, gc)
    assert_identical(fast, exact)
    assert exact.mean_ap < 0.5
    num_positives = sum(int(((gp == p) & (gc != c)).sum()) for p, c in zip(qp, qc, strict=True))
    assert settled == [num_positives]


def test_all_finite_checks_entries_when_the_sum_overflows() -> None:
    huge = torch.full((4, 3), 3e38)
    assert not np.isfinite(float(huge.sum()))
    assert ranking.all_finite(huge)
    for bad in (torch.inf, -torch.inf, torch.nan):
        with_bad = huge.clone()
        with_bad[2, 1] = bad
        assert not ranking.all_finite(with_bad)
        assert not ranking.all_finite(torch.tensor([[1.0, bad]]))


def test_order_preserving_bits_sort_float32_values_like_the_values():
    special = [-math.inf, -3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 0.5, 1.0, 3e38, math.inf]
    rng = np.random.default_rng(10)
    values = torch.tensor(special + list(rng.normal(size=200) * 10.0 ** rng.integers(-30, 30, 200)),
                          dtype=torch.float32)
    keys = ranking._order_preserving_bits(values)
    assert bool(((keys >= 0) & (keys < 2**32)).all())
    order = torch.argsort(keys, stable=True)
    assert bool((values[order][1:] >= values[order][:-1]).all())
    assert keys[4] == keys[5]  # -0.0 and 0.0 are equal distances
    bits = values.view(torch.int32).clone()
    assert torch.equal(ranking.order_keys_(ranking.order_keys_(bits)), values.view(torch.int32))
