"""Tests for reid_transformers.retrieval.index.GalleryIndex."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_transformers import utils as utils_module
from reid_transformers.retrieval import index as index_module
from reid_transformers.retrieval.index import (
    FORMAT_VERSION,
    RECOMMENDED_APPROXIMATE,
    GalleryIndex,
    SearchResult,
)

DIM = 32
METRICS = ("cosine", "euclidean", "inner_product")
INDEX_TYPES = ("flat", "ivf", "hnsw")
TIE_FREE_K = 10
TIE_GAP = 1e-4


def _clustered(n: int, dim: int, *, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(300, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def queries(gallery) -> np.ndarray:
    """20 random queries whose top-11 neighbours are separated by > 1e-4 under every metric,
    so that exact search has a unique answer to compare against."""
    candidates = np.random.default_rng(1).normal(size=(400, DIM)).astype(np.float32)
    keep = np.ones(len(candidates), dtype=bool)
    for metric in METRICS:
        values, _ = _exact_top_k(gallery, candidates, metric, TIE_FREE_K + 1)
        keep &= np.abs(np.diff(values, axis=1)).min(axis=1) > TIE_GAP
    assert keep.sum() >= 20
    return candidates[keep][:20]


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """A few thousand clustered vectors (gallery) and queries drawn from the same clusters."""
    data = _clustered(3200, 48, clusters=60, noise=1.0, seed=2)
    return data[:3000], data[3000:]


def _exact_top_k(
    gallery: np.ndarray, queries: np.ndarray, metric: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k in float64 with torch; returns (values, indices), best first."""
    g = torch.from_numpy(gallery).double()
    q = torch.from_numpy(queries).double()
    if metric == "cosine":
        g = torch.nn.functional.normalize(g, dim=1)
        q = torch.nn.functional.normalize(q, dim=1)
    if metric == "euclidean":
        values, indices = torch.cdist(q, g).topk(k, dim=1, largest=False)
    else:
        values, indices = (q @ g.T).topk(k, dim=1)
    return values.numpy(), indices.numpy()


def _build(gallery: np.ndarray, **kwargs: object) -> GalleryIndex:
    index = GalleryIndex(gallery.shape[1], **kwargs)  # type: ignore[arg-type]
    n = len(gallery)
    index.add(
        gallery,
        pids=np.arange(n) // 3,
        camids=np.arange(n) % 6,
        paths=[f"img/{i:04d}.jpg" for i in range(n)],
    )
    return index


@pytest.fixture(scope="module")
def built_clustered(clustered):
    """Indexes over the clustered gallery, built once per settings; tests must not mutate them."""
    cache: dict[tuple[str, str], GalleryIndex] = {}

    def get(metric: str, index_type: str) -> GalleryIndex:
        if (metric, index_type) not in cache:
            cache[metric, index_type] = _build(clustered[0], metric=metric, index_type=index_type)
        return cache[metric, index_type]

    return get


# ---------------------------------------------------------------------- exact search
def _reference_top_k(
    gallery: np.ndarray, queries: np.ndarray, metric: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64, best first with ties to the lower row number; (values as
    float32, indices). Exact for small-integer inner products and Euclidean distances."""
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    if metric == "euclidean":
        values = np.sqrt(np.square(q[:, None, :] - g[None]).sum(axis=2))
        sort_keys = values
    else:
        values = q @ g.T
        sort_keys = -values
    rows = np.arange(gallery.shape[0])
    order = np.stack([np.lexsort((rows, keys))[:k] for keys in sort_keys])
    return np.take_along_axis(values, order, axis=1).astype(np.float32), order


def _exactness_data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries) for the exactness tests: random; tied (small integers, many
    duplicate rows and equal scores); adversarial (every vector within 1e-4 of one
    direction, so bfloat16 cannot tell the candidates apart and many are near-tied)."""
    rng = np.random.default_rng(7)
    if kind == "random":
        return rng.normal(size=(400, 24)), rng.normal(size=(30, 24))
    if kind == "tied":
        gallery = rng.integers(-2, 3, size=(400, 6))
        gallery[::5] = gallery[1]
        queries = rng.integers(-2, 3, size=(30, 6))
        gallery[:, 0] += np.abs(gallery).sum(axis=1) == 0  # no zero vectors (cosine)
        queries[:, 0] += np.abs(queries).sum(axis=1) == 0
        return gallery, queries
    base = rng.normal(size=(1, 24))
    return base + 1e-4 * rng.normal(size=(400, 24)), base + 1e-4 * rng.normal(size=(30, 24))


@pytest.mark.parametrize("kind", ["random", "tied", "adversarial"])
@pytest.mark.parametrize("metric", METRICS)
def test_bfloat16_search_returns_exactly_the_float32_top_k(metric, kind):
    gallery, queries = (x.astype(np.float32) for x in _exactness_data(kind))
    results = {}
    for precision in ("float32", "bfloat16"):
        index = GalleryIndex(gallery.shape[1], metric=metric, precision=precision)
        index.add(gallery)
        results[precision] = index.search(queries, k=10)
    np.testing.assert_array_equal(results["bfloat16"].indices, results["float32"].indices)
    np.testing.assert_array_equal(results["bfloat16"].values, results["float32"].values)


@pytest.mark.parametrize("metric", ["inner_product", "euclidean"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_flat_search_breaks_ties_by_lower_row_number(precision, metric):
    """Small integers: every score is exact in float32, so the answer is fully determined,
    including which of many tied rows come first."""
    gallery, queries = (x.astype(np.float32) for x in _exactness_data("tied"))
    values, indices = _reference_top_k(gallery, queries, metric, 10)
    index = GalleryIndex(gallery.shape[1], metric=metric, precision=precision)
    index.add(gallery)
    result = index.search(queries, k=10)
    np.testing.assert_array_equal(result.indices, indices)
    np.testing.assert_array_equal(result.values, values)


def test_bfloat16_candidates_need_the_rescore():
    """Without the exact re-score, bfloat16 scores would rank the adversarial set wrongly:
    the test above would fail if the re-score or its margin were dropped."""
    gallery, queries = (x.astype(np.float32) for x in _exactness_data("adversarial"))
    low_scores = torch.from_numpy(queries).bfloat16() @ torch.from_numpy(gallery).bfloat16().T
    _, low_order = low_scores.float().topk(10, dim=1)
    _, indices = _reference_top_k(gallery, queries, "inner_product", 10)
    assert not np.array_equal(low_order.numpy(), indices)


def test_margin_overflow_scans_the_whole_row(monkeypatch):
    """A query whose candidate margin reaches past the kept top-k slots (here: every row
    tied) falls back to a full pass over its row and still gets the exact answer."""
    monkeypatch.setitem(index_module._EXTRA_CANDIDATES, "float32", 1)
    gallery = np.ones((50, 4), dtype=np.float32)
    index = GalleryIndex(4, metric="inner_product")
    index.add(gallery)
    result = index.search(np.ones((3, 4), dtype=np.float32), k=5)
    np.testing.assert_array_equal(result.indices, np.tile(np.arange(5), (3, 1)))
    np.testing.assert_array_equal(result.scores, np.full((3, 5), 4.0, dtype=np.float32))


def test_flat_search_works_in_query_blocks(monkeypatch, gallery, queries):
    whole = _build(gallery, metric="euclidean").search(queries, k=7)
    # Blocks of 5 queries (4 bytes x 300 rows x 5) and re-score blocks of about 2 queries.
    monkeypatch.setattr(index_module, "_SCORE_BLOCK_BYTES", 4 * 300 * 5)
    monkeypatch.setattr(index_module, "_RESCORE_BLOCK_BYTES", 4 * DIM * 7 * 2)
    blocked = _build(gallery, metric="euclidean").search(queries, k=7)
    np.testing.assert_array_equal(blocked.indices, whole.indices)
    np.testing.assert_array_equal(blocked.distances, whole.distances)


def test_precision_option_validation_and_adds_after_search(gallery, queries):
    with pytest.raises(ValueError, match="precision must be one of .*got 'float16'"):
        GalleryIndex(DIM, precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs index_type='flat'.*got index_type='hnsw'"):
        GalleryIndex(DIM, index_type="hnsw", precision="bfloat16")
    index = GalleryIndex(DIM, precision="bfloat16")
    index.add(gallery[:100])
    index.search(queries, k=5)  # builds the cached bfloat16 copy and norms
    index.add(gallery[100:])  # ... which must be rebuilt for the grown gallery
    index.precision = "float32"
    reference = index.search(queries, k=5)
    index.precision = "bfloat16"
    result = index.search(queries, k=5)
    np.testing.assert_array_equal(result.indices, reference.indices)
    assert result.indices.max() >= 100


@pytest.mark.parametrize("metric", METRICS)
def test_flat_search_matches_brute_force(metric, gallery, queries):
    index = _build(gallery, metric=metric)
    result = index.search(queries, k=TIE_FREE_K)
    values, indices = _exact_top_k(gallery, queries, metric, TIE_FREE_K)
    assert result.indices.dtype == np.int64 and result.indices.shape == (20, 10)
    np.testing.assert_array_equal(result.indices, indices)
    assert result.values.dtype == np.float32
    np.testing.assert_allclose(result.values, values, atol=1e-5, rtol=0)
    if metric == "euclidean":
        assert result.scores is None and result.distances is result.values
    else:
        assert result.distances is None and result.scores is result.values


def test_euclidean_distances_are_not_squared(gallery, queries):
    result = _build(gallery, metric="euclidean").search(queries[0], k=1)
    expected = np.linalg.norm(gallery[result.indices[0, 0]] - queries[0])
    assert result.distances[0, 0] == pytest.approx(expected, abs=1e-5)


def test_metadata_is_returned_for_each_neighbour(gallery, queries):
    result = _build(gallery).search(queries, k=5)
    np.testing.assert_array_equal(result.pids, result.indices // 3)
    np.testing.assert_array_equal(result.camids, result.indices % 6)
    assert result.paths == [[f"img/{i:04d}.jpg" for i in row] for row in result.indices]
    assert result.pids.dtype == np.int64 and result.camids.dtype == np.int64
    assert len(result) == 20


def test_missing_metadata_is_minus_one_or_none(gallery):
    index = GalleryIndex(DIM, metric="euclidean")
    index.add(gallery[:2], pids=[7, 8], paths=["a.jpg", Path("b.jpg")])
    index.add(gallery[2:4], camids=torch.tensor([3, 4]))
    np.testing.assert_array_equal(index.pids, [7, 8, -1, -1])
    np.testing.assert_array_equal(index.camids, [-1, -1, 3, 4])
    assert index.paths == ["a.jpg", "b.jpg", None, None]
    result = index.search(gallery[:4], k=1)  # each row's nearest neighbour is itself
    np.testing.assert_array_equal(result.indices[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(result.pids[:, 0], [7, 8, -1, -1])
    np.testing.assert_array_equal(result.camids[:, 0], [-1, -1, 3, 4])
    assert [row[0] for row in result.paths] == ["a.jpg", "b.jpg", None, None]


def test_repeated_add_equals_single_add(gallery, queries):
    whole = _build(gallery, metric="cosine")
    pieces = GalleryIndex(DIM, metric="cosine")
    for start in range(0, 300, 70):
        stop = min(start + 70, 300)
        rows = np.arange(start, stop)
        pieces.add(
            gallery[start:stop],
            pids=rows // 3,
            camids=rows % 6,
            paths=[f"img/{i:04d}.jpg" for i in rows],
        )
    assert len(pieces) == 300
    expected, got = whole.search(queries, k=7), pieces.search(queries, k=7)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.pids, expected.pids)
    np.testing.assert_array_equal(got.camids, expected.camids)
    assert got.paths == expected.paths
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)


def test_k_larger_than_index_is_clipped(gallery, queries):
    index = _build(gallery[:5], metric="euclidean")
    result = index.search(queries, k=50)
    assert result.indices.shape == (20, 5) and result.distances.shape == (20, 5)
    assert sorted(result.indices[0].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(result.distances, axis=1) >= 0)


def test_single_vector_query_is_one_row(gallery, queries):
    index = _build(gallery)
    single = index.search(queries[3], k=4)
    batch = index.search(queries, k=4)
    assert single.indices.shape == (1, 4)
    np.testing.assert_array_equal(single.indices[0], batch.indices[3])
    np.testing.assert_allclose(single.scores[0], batch.scores[3], atol=1e-6)


def test_zero_queries_give_empty_result(gallery):
    result = _build(gallery).search(np.empty((0, DIM), dtype=np.float32), k=3)
    assert result.indices.shape == (0, 3) and result.scores.shape == (0, 3)
    assert result.paths == []


def test_torch_and_any_float_dtype_are_accepted(gallery, queries):
    reference = _build(gallery).search(queries, k=5)
    index = GalleryIndex(DIM)
    index.add(torch.from_numpy(gallery).double().requires_grad_())
    for converted in (torch.from_numpy(queries).bfloat16(), queries.astype(np.float16)):
        result = index.search(converted, k=5)
        # Low-precision queries may swap the order of near neighbours, not the set.
        overlap = np.mean(
            [
                len(set(a) & set(b)) / 5
                for a, b in zip(result.indices, reference.indices, strict=True)
            ]
        )
        assert overlap >= 0.9
    np.testing.assert_array_equal(
        index.search(torch.from_numpy(queries), k=5).indices, reference.indices
    )


def test_cosine_does_not_modify_callers_array(gallery):
    data = gallery[:10].copy()
    GalleryIndex(DIM, metric="cosine").add(data)
    np.testing.assert_array_equal(data, gallery[:10])


def test_missing_neighbours_are_marked():
    data = _clustered(800, 16, clusters=20, noise=0.1, seed=3)
    for metric, fill in (("cosine", -np.inf), ("euclidean", np.inf)):
        index = GalleryIndex(16, metric=metric, index_type="ivf", nlist=20, nprobe=1)
        index.add(data, paths=[str(i) for i in range(800)])
        result = index.search(data[:4], k=800)  # one list holds far fewer than 800 rows
        missing = result.indices == -1
        assert missing.any() and not missing.all()
        assert np.all(result.values[missing] == fill)
        assert np.all(result.pids[missing] == -1) and np.all(result.camids[missing] == -1)
        assert all(
            (path is None) == (i == -1)
            for row_paths, row in zip(result.paths, result.indices, strict=True)
            for path, i in zip(row_paths, row, strict=True)
        )


# ---------------------------------------------------------------------- approximate
@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", METRICS)
def test_approximate_recall_is_high_and_correct(index_type, metric, clustered, built_clustered):
    _, queries = clustered
    index = built_clustered(metric, index_type)
    recall = index.recall_at_k(queries, k=10)
    assert 0.9 <= recall <= 1.0
    # Recompute the definition independently: exact top-10 from a flat index.
    exact = built_clustered(metric, "flat").search(queries, k=10).indices
    approximate = index.search(queries, k=10).indices
    manual = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall == pytest.approx(manual)


def test_recommended_approximate_setting_builds_an_accurate_hnsw(clustered):
    gallery, queries = clustered
    index = GalleryIndex(gallery.shape[1], **RECOMMENDED_APPROXIMATE)
    index.add(gallery)
    assert (index.index_type, index.hnsw_m, index.ef_construction, index.ef_search) == (
        "hnsw", 16, 80, 128
    )
    assert index.recall_at_k(queries, k=100) >= 0.95


def test_recall_detects_a_weaker_search(clustered):
    gallery, queries = clustered
    ivf = _build(gallery, index_type="ivf", nlist=64, nprobe=64)
    full = ivf.recall_at_k(queries, k=10)
    ivf.nprobe = 1
    assert ivf.nprobe == 1
    assert full == pytest.approx(1.0)
    assert ivf.recall_at_k(queries, k=10) < full
    hnsw = _build(gallery, index_type="hnsw", hnsw_m=4, ef_search=1)
    weak = hnsw.recall_at_k(queries, k=10)
    hnsw.ef_search = 256
    assert hnsw.ef_search == 256
    assert hnsw.recall_at_k(queries, k=10) > weak


def test_flat_recall_is_one(gallery, queries):
    assert _build(gallery).recall_at_k(queries, k=10) == 1.0


def test_recall_reconstructs_in_blocks(monkeypatch, clustered, built_clustered):
    _, queries = clustered
    index = built_clustered("cosine", "hnsw")
    expected = index.recall_at_k(queries, k=10)
    # 1000-row blocks (plus a 10-row remainder block) must merge to the same answer.
    monkeypatch.setattr(index_module, "_EXACT_BLOCK_BYTES", 4 * 48 * 990)
    assert index.recall_at_k(queries, k=10) == pytest.approx(expected)


def test_ivf_trains_on_first_add_with_auto_nlist(clustered):
    gallery, _ = clustered
    index = GalleryIndex(48, index_type="ivf")
    assert not index.is_trained and len(index) == 0 and index.nlist is None
    assert "trained=False" in repr(index)
    index.add(gallery)
    # min(round(4 * sqrt(3000)), 3000 // 39) = min(219, 76)
    assert index.is_trained and index.nlist == 76
    index.add(gallery[:10])
    assert len(index) == 3010


def test_ivf_explicit_nlist_needs_enough_training_vectors(clustered, capfd):
    gallery, _ = clustered
    index = GalleryIndex(48, index_type="ivf", nlist=500)
    with pytest.raises(ValueError, match=r"nlist=500 needs at least 5000 .* got 3000.*at most 300"):
        index.train(gallery)
    with pytest.raises(ValueError, match=r"nlist=500 needs at least 5000 .* got 3000"):
        index.add(gallery, pids=np.arange(3000))
    assert not index.is_trained and len(index) == 0 and index.pids.size == 0
    # 15 vectors per list is below faiss's 39-per-centroid guideline but deliberate: accepted
    # without faiss printing its own warning.
    index = GalleryIndex(48, index_type="ivf", nlist=200)
    index.train(gallery)
    assert capfd.readouterr().err == ""
    assert index.nlist == 200 and len(index) == 0 and index.is_trained
    index.add(gallery[:500])
    assert len(index) == 500
    with pytest.raises(RuntimeError, match="already trained"):
        index.train(gallery)
    with pytest.raises(ValueError, match="empty"):
        GalleryIndex(48, index_type="ivf").train(np.empty((0, 48), dtype=np.float32))


def test_train_is_a_validated_no_op_for_flat_and_hnsw(gallery):
    for index_type in ("flat", "hnsw"):
        index = GalleryIndex(DIM, index_type=index_type)
        index.train(gallery)
        assert len(index) == 0 and index.is_trained
        with pytest.raises(ValueError, match="dimension 3"):
            index.train(np.ones((2, 3), dtype=np.float32))


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_save_load_round_trip(tmp_path, index_type, clustered):
    gallery, queries = clustered
    index = _build(
        gallery,
        metric="euclidean",
        index_type=index_type,
        nprobe=8,
        ef_search=40,
        ef_construction=50,
    )
    returned = index.save(tmp_path / "saved")
    assert returned == tmp_path / "saved"
    loaded = GalleryIndex.load(tmp_path / "saved")
    assert repr(loaded) == repr(index)
    assert (loaded.dim, loaded.metric, loaded.index_type, len(loaded)) == (
        48,
        "euclidean",
        index_type,
        3000,
    )
    assert (loaded.nprobe, loaded.ef_search, loaded.ef_construction) == (8, 40, 50)
    assert loaded.nlist == index.nlist
    expected, got = index.search(queries, k=10), loaded.search(queries, k=10)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.distances, expected.distances)
    np.testing.assert_array_equal(got.pids, expected.pids)
    np.testing.assert_array_equal(got.camids, expected.camids)
    assert got.paths == expected.paths
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["size"] == 3000
    # A loaded index keeps working as a normal one.
    loaded.add(gallery[:3], pids=[1, 2, 3])
    assert len(loaded) == 3003 and loaded.pids[-3:].tolist() == [1, 2, 3]


def test_precision_is_saved_and_defaults_to_float32_for_older_saves(tmp_path, gallery):
    _build(gallery, precision="bfloat16").save(tmp_path / "saved")
    assert GalleryIndex.load(tmp_path / "saved").precision == "bfloat16"
    config_path = tmp_path / "saved" / "config.json"
    config = json.loads(config_path.read_text())
    del config["precision"]
    config_path.write_text(json.dumps(config))
    assert GalleryIndex.load(tmp_path / "saved").precision == "float32"


def test_save_replaces_previous_index_and_leaves_no_temporaries(tmp_path, gallery):
    _build(gallery[:10]).save(tmp_path / "saved")
    _build(gallery[:20]).save(tmp_path / "saved")
    assert len(GalleryIndex.load(tmp_path / "saved")) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_save_refuses_to_replace_unrelated_directory(tmp_path, gallery):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="holiday.jpg"):
        _build(gallery).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        _build(gallery).save(tmp_path / "file")


def test_untrained_ivf_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="untrained"):
        GalleryIndex(DIM, index_type="ivf").save(tmp_path / "saved")


def _assert_intact(directory: Path, reference: GalleryIndex, queries: np.ndarray) -> None:
    loaded = GalleryIndex.load(directory)
    assert len(loaded) == len(reference)
    np.testing.assert_array_equal(
        loaded.search(queries, k=5).indices, reference.search(queries, k=5).indices
    )
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]


def test_crash_while_writing_keeps_previous_save(tmp_path, monkeypatch, gallery, queries):
    old = _build(gallery[:100])
    old.save(tmp_path / "saved")
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(args[0])
        raise OSError("disk full")

    monkeypatch.setattr(index_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _build(gallery).save(tmp_path / "saved")
    assert calls  # the failure really happened mid-save, after index.faiss was written
    monkeypatch.undo()
    _assert_intact(tmp_path / "saved", old, queries)


def test_failure_to_delete_previous_save_only_warns(tmp_path, monkeypatch, gallery):
    _build(gallery[:10]).save(tmp_path / "saved")

    def failing_rmtree(path):
        raise OSError(f"busy: {path}")

    monkeypatch.setattr(utils_module.shutil, "rmtree", failing_rmtree)
    with pytest.warns(RuntimeWarning, match=r"previous version.*could not be deleted.*busy"):
        _build(gallery[:20]).save(tmp_path / "saved")
    monkeypatch.undo()
    assert len(GalleryIndex.load(tmp_path / "saved")) == 20


def test_crash_while_swapping_keeps_previous_save(tmp_path, monkeypatch, gallery, queries):
    old = _build(gallery[:100])
    old.save(tmp_path / "saved")
    real_replace = os.replace

    def failing_replace(source, destination):
        if Path(source).name.startswith(".saved.tmp-"):
            raise OSError("simulated crash between renames")
        real_replace(source, destination)

    monkeypatch.setattr(utils_module, "_exchange", lambda *_: False)  # the two-rename path
    monkeypatch.setattr(utils_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        _build(gallery).save(tmp_path / "saved")
    monkeypatch.undo()
    _assert_intact(tmp_path / "saved", old, queries)


@pytest.fixture
def saved(tmp_path, gallery) -> Path:
    return _build(gallery[:50], index_type="hnsw").save(tmp_path / "saved")


def test_load_missing_directory_or_not_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GalleryIndex.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        GalleryIndex.load(tmp_path / "file")


@pytest.mark.parametrize(
    "name", ["config.json", "index.faiss", "pids.npy", "camids.npy", "paths.json"]
)
def test_load_missing_file_names_it(saved, name):
    (saved / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        GalleryIndex.load(saved)


@pytest.mark.parametrize("name", ["index.faiss", "pids.npy", "camids.npy", "paths.json"])
def test_load_corrupt_file_names_it(saved, name):
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{re.escape(name)} is corrupt: its SHA-256"):
        GalleryIndex.load(saved)
    (saved / name).write_bytes(bytes(data[:-7]))
    with pytest.raises(ValueError, match=rf"{re.escape(name)} is corrupt: \d+ bytes"):
        GalleryIndex.load(saved)


def _rewrite(saved: Path, name: str, content: bytes) -> None:
    """Replace a file and update config.json so that only deeper checks can catch it."""
    (saved / name).write_bytes(content)
    config = json.loads((saved / "config.json").read_text())
    config["files"][name] = {
        "bytes": len(content),
        "sha256": index_module._sha256(saved / name),
    }
    (saved / "config.json").write_text(json.dumps(config))


def test_load_unreadable_parts_with_matching_checksums(saved, tmp_path):
    _rewrite(saved, "index.faiss", b"not a faiss index at all")
    with pytest.raises(ValueError, match=r"index\.faiss could not be read by faiss"):
        GalleryIndex.load(saved)


def test_load_inconsistent_row_counts(saved, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros(49, dtype=np.int64))
    _rewrite(saved, "pids.npy", (tmp_path / "short.npy").read_bytes())
    with pytest.raises(ValueError, match=r"row counts disagree.*'pids\.npy': 49"):
        GalleryIndex.load(saved)


def test_load_bad_label_dtype_and_paths(saved, tmp_path):
    np.save(tmp_path / "float.npy", np.zeros(50, dtype=np.float32))
    _rewrite(saved, "camids.npy", (tmp_path / "float.npy").read_bytes())
    with pytest.raises(ValueError, match=r"camids\.npy must hold a 1-D int64 array"):
        GalleryIndex.load(saved)


def test_load_bad_paths_json(saved):
    _rewrite(saved, "paths.json", b'{"not": "a list"}')
    with pytest.raises(ValueError, match=r"paths\.json must hold a JSON list"):
        GalleryIndex.load(saved)


def test_load_bad_config(saved):
    config_path = saved / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text("{ truncated")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        GalleryIndex.load(saved)
    config_path.write_text(json.dumps({**config, "format_version": 999}))
    with pytest.raises(ValueError, match="format_version=999"):
        GalleryIndex.load(saved)
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "dim"}))
    with pytest.raises(ValueError, match=r"missing keys \['dim'\]"):
        GalleryIndex.load(saved)
    config_path.write_text(json.dumps({**config, "metric": "manhattan"}))
    with pytest.raises(ValueError, match="invalid settings.*manhattan"):
        GalleryIndex.load(saved)
    config_path.write_text(json.dumps({**config, "index_type": "flat"}))
    with pytest.raises(ValueError, match="IndexHNSWFlat, config says index_type='flat'"):
        GalleryIndex.load(saved)
    config_path.write_text(json.dumps({**config, "kind": "something else"}))
    with pytest.raises(ValueError, match="does not describe a GalleryIndex"):
        GalleryIndex.load(saved)


# ---------------------------------------------------------------------- validation
def test_constructor_validation():
    with pytest.raises(ValueError, match="metric must be one of .* got 'manhattan'"):
        GalleryIndex(DIM, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="index_type must be one of .* got 'lsh'"):
        GalleryIndex(DIM, index_type="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got 0"):
        GalleryIndex(0)
    with pytest.raises(ValueError, match="nlist must be an integer >= 1"):
        GalleryIndex(DIM, nlist=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hnsw_m must be an integer >= 2"):
        GalleryIndex(DIM, hnsw_m=1)
    with pytest.raises(ValueError, match="ef_construction must be an integer >= 1, got 0"):
        GalleryIndex(DIM, ef_construction=0)
    index = GalleryIndex(DIM)
    with pytest.raises(ValueError, match="nprobe must be an integer >= 1"):
        index.nprobe = 0
    with pytest.raises(ValueError, match="ef_search must be an integer >= 1"):
        index.ef_search = True  # type: ignore[assignment]


def test_dimension_mismatch(gallery):
    index = GalleryIndex(DIM)
    with pytest.raises(ValueError, match=f"dimension 16 but this index has dim={DIM}"):
        index.add(gallery[:, :16])
    index.add(gallery)
    with pytest.raises(ValueError, match=f"queries has dimension 8 but this index has dim={DIM}"):
        index.search(np.ones((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 32\)"):
        index.search(np.ones((2, 3, DIM), dtype=np.float32))


def test_metadata_length_mismatch_names_both_lengths(gallery):
    index = GalleryIndex(DIM)
    with pytest.raises(ValueError, match="pids has length 3 but embeddings has 5 rows"):
        index.add(gallery[:5], pids=[1, 2, 3])
    with pytest.raises(ValueError, match="camids has length 6 but embeddings has 5 rows"):
        index.add(gallery[:5], camids=np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="paths has length 1 but embeddings has 5 rows"):
        index.add(gallery[:5], paths=["a"])
    assert len(index) == 0  # a rejected add stores nothing


def test_metadata_type_errors(gallery):
    index = GalleryIndex(DIM)
    with pytest.raises(TypeError, match="pids must be integers, got dtype float64"):
        index.add(gallery[:2], pids=[1.5, 2.0])
    with pytest.raises(TypeError, match="single path"):
        index.add(gallery[:2], paths="ab")
    with pytest.raises(ValueError, match=r"camids must be 1-D, got shape \(2, 1\)"):
        index.add(gallery[:2], camids=np.zeros((2, 1), dtype=np.int64))


def test_zero_vector_with_cosine_is_rejected(gallery):
    data = gallery[:5].copy()
    data[3] = 0.0
    with pytest.raises(ValueError, match=r"embeddings rows \[3\] are zero vectors"):
        GalleryIndex(DIM, metric="cosine").add(data)
    GalleryIndex(DIM, metric="euclidean").add(data)  # fine for other metrics
    index = _build(gallery)
    with pytest.raises(ValueError, match=r"queries rows \[0\] are zero vectors"):
        index.search(np.zeros(DIM, dtype=np.float32))


def test_non_finite_and_non_float_inputs(gallery):
    index = GalleryIndex(DIM, metric="euclidean")
    data = gallery[:4].copy()
    data[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in rows \[2\]"):
        index.add(data)
    with pytest.raises(TypeError, match="floating-point array, got dtype int64"):
        index.add(np.ones((2, DIM), dtype=np.int64))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int32"):
        index.add(torch.ones(2, DIM, dtype=torch.int32))


def test_empty_index_and_bad_k(gallery, queries):
    for index_type in INDEX_TYPES:
        empty = GalleryIndex(DIM, index_type=index_type)
        with pytest.raises(ValueError, match="cannot search an empty GalleryIndex"):
            empty.search(queries)
        with pytest.raises(ValueError, match="empty GalleryIndex"):
            empty.recall_at_k(queries)
    index = _build(gallery)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        index.search(queries, k=0)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got True"):
        index.search(queries, k=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queries is empty"):
        index.recall_at_k(np.empty((0, DIM), dtype=np.float32))


def test_repr_and_properties():
    assert repr(GalleryIndex(8)) == (
        "GalleryIndex(dim=8, metric='cosine', index_type='flat', size=0, precision='float32')"
    )
    hnsw = GalleryIndex(
        8, metric="euclidean", index_type="hnsw", hnsw_m=8, ef_search=20, ef_construction=30
    )
    assert repr(hnsw) == (
        "GalleryIndex(dim=8, metric='euclidean', index_type='hnsw', size=0, hnsw_m=8, "
        "ef_construction=30, ef_search=20)"
    )
    assert (hnsw.dim, hnsw.metric, hnsw.index_type) == (8, "euclidean", "hnsw")
    assert (hnsw.hnsw_m, hnsw.ef_construction, hnsw.ef_search) == (8, 30, 20)
    ivf = GalleryIndex(8, index_type="ivf", nlist=4, nprobe=2)
    assert repr(ivf) == (
        "GalleryIndex(dim=8, metric='cosine', index_type='ivf', size=0, nlist=4, nprobe=2, "
        "trained=False)"
    )


def test_search_result_needs_exactly_one_value_array():
    empty = np.empty((0, 1))
    with pytest.raises(ValueError, match="exactly one of scores and distances"):
        SearchResult("cosine", empty, empty, empty, [])
    with pytest.raises(ValueError, match="exactly one of scores and distances"):
        SearchResult("cosine", empty, empty, empty, [], scores=empty, distances=empty)
