"""Ranking metrics against a plain per-query reference of the Market-1501 protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_transformers.evaluation import (
    RankingResult,
    evaluate_distance_matrix,
    evaluate_ranking,
    pairwise_distance,
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
    np.testing.assert_allclose(pairwise_distance(q, g).numpy(), expected, rtol=1e-5, atol=1e-5)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(
        pairwise_distance(q, g, metric="cosine").numpy(), 1 - qn @ gn.T, atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_pids": [1, 2]}, "query_pids has 2 entries but 3"),
        ({"gallery_camids": [[0, 1, 2, 3]]}, "gallery_camids must be 1-D"),
        ({"query_pids": [1.0, 2.0, 3.0]}, "query_pids must hold integers"),
        ({"max_rank": 0}, "max_rank must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"metric": "manhattan"}, "metric must be one of"),
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
