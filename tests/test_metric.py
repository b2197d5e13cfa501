from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch

from reid_transformers.evaluation import (
    METRIC_PATH,
    ReIDMetric,
    evaluate_distance_matrix,
    evaluate_ranking,
    k_reciprocal_rerank,
)


def problem(seed=0, num_q=30, num_g=120, dim=12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim))
    qp, gp = rng.integers(0, 10, num_q), rng.integers(0, 10, num_g)
    qc, gc = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q = (centres[qp] + 0.8 * rng.normal(size=(num_q, dim))).astype(np.float32)
    g = (centres[gp] + 0.8 * rng.normal(size=(num_g, dim))).astype(np.float32)
    return q, g, qp, gp, qc, gc


@pytest.fixture(scope="module")
def metric():
    loaded = evaluate.load(METRIC_PATH)
    assert isinstance(loaded, evaluate.Metric)
    assert type(loaded).__name__ == "ReIDMetric"
    return loaded


def test_loads_offline_and_matches_ranking_core(metric):
    q, g, qp, gp, qc, gc = problem()
    out = metric.compute(
        query_embeddings=q, query_pids=qp, query_camids=qc,
        gallery_embeddings=g, gallery_pids=gp, gallery_camids=gc,
    )
    ref = evaluate_ranking(q, g, qp, gp, qc, gc, metric="cosine")
    assert out["mAP"] == pytest.approx(ref.mean_ap)
    assert out["mINP"] == pytest.approx(ref.mean_inp)
    assert out["rank-1"] == pytest.approx(ref.rank(1))
    assert out["cmc"] == pytest.approx(ref.cmc.tolist())
    assert out["num_valid_queries"] + out["num_skipped_queries"] == len(q)


def test_batches_accumulate_in_memory_and_store_is_cleared():
    q, g, qp, gp, qc, gc = problem(1)
    metric = ReIDMetric()
    for s in range(0, len(q), 7):
        metric.add_batch(query_embeddings=torch.from_numpy(q[s : s + 7]),
                         query_pids=torch.from_numpy(qp[s : s + 7]),
                         query_camids=qc[s : s + 7].tolist())
    for s in range(0, len(g), 50):
        metric.add_batch(gallery_embeddings=g[s : s + 50], gallery_pids=gp[s : s + 50],
                         gallery_camids=gc[s : s + 50])
    metric.add(query_embeddings=q[0], query_pids=qp[0], query_camids=qc[0])
    assert len(metric) == len(q) + len(g) + 1
    out = metric.compute(distance="cosine", ranks=(1, 3), max_rank=5)
    qq = np.concatenate([q, q[:1]])
    ref = evaluate_ranking(qq, g, np.r_[qp, qp[:1]], gp, np.r_[qc, qc[:1]], gc,
                           metric="cosine", max_rank=5)
    assert out["mAP"] == pytest.approx(ref.mean_ap)
    assert set(out) >= {"rank-1", "rank-3"} and len(out["cmc"]) == 5
    assert len(metric) == 0
    with pytest.raises(ValueError, match="no query items were added"):
        metric.compute()


def test_rerank_option_uses_reranked_distances():
    q, g, qp, gp, qc, gc = problem(2)
    out = ReIDMetric().compute(
        rerank=True, k1=8, k2=3, query_embeddings=q, query_pids=qp, query_camids=qc,
        gallery_embeddings=g, gallery_pids=gp, gallery_camids=gc,
    )
    dist = k_reciprocal_rerank(q, g, k1=8, k2=3, metric="cosine")
    ref = evaluate_distance_matrix(dist, qp, gp, qc, gc)
    assert out["mAP"] == pytest.approx(ref.mean_ap)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_vectors": np.zeros((1, 2))}, "unknown inputs"),
        ({"query_embeddings": np.zeros((2, 4)), "query_pids": [1, 2]}, "missing"),
        ({"query_embeddings": np.zeros(4), "query_pids": [1], "query_camids": [0]}, "2-D"),
        ({"query_embeddings": np.zeros((2, 4)), "query_pids": [1], "query_camids": [0, 1]},
         "batch sizes differ"),
    ],
)
def test_bad_batches(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReIDMetric().add_batch(**kwargs)


def test_dimension_change_and_bad_distance():
    metric = ReIDMetric()
    metric.add_batch(query_embeddings=np.zeros((1, 4)), query_pids=[1], query_camids=[0])
    with pytest.raises(ValueError, match="dimension 5 differs"):
        metric.add_batch(query_embeddings=np.zeros((1, 5)), query_pids=[1], query_camids=[0])
    with pytest.raises(ValueError, match="distance must be one of"):
        metric.compute(distance="hamming")


def test_default_distance_is_cosine():
    # Scaling each query differently changes Euclidean ranks but not cosine ones, so the
    # default must ignore the scale exactly as an explicit distance="cosine" does.
    q, g, qp, gp, qc, gc = problem(3)
    q = q * np.linspace(0.05, 20.0, len(q), dtype=np.float32)[:, None]
    inputs = dict(query_embeddings=q, query_pids=qp, query_camids=qc,
                  gallery_embeddings=g, gallery_pids=gp, gallery_camids=gc)
    default = ReIDMetric().compute(**inputs)
    cosine = ReIDMetric().compute(distance="cosine", **inputs)
    euclidean = ReIDMetric().compute(distance="euclidean", **inputs)
    assert default["mAP"] == pytest.approx(cosine["mAP"])
    assert default["mAP"] != pytest.approx(euclidean["mAP"])
