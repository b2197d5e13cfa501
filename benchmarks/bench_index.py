"""GalleryIndex build/search speed and recall, with the exact flat index as the baseline.

Market-1501 scale by default: 15,913 gallery x 3,368 query embeddings of 768-d, 751
identities, 6 cameras, k = 10, cosine metric. Approximate-search recall depends strongly on
the geometry of the features, so three synthetic feature sets are measured:

- ``noisy``: `common.correlated_features` at its default noise (2.1 at 768-d). Retrieves
  like a decent re-ID model (mAP ~0.7), but the noise dominates (same-identity cosine
  ~0.2), so the vectors are near-isotropic in 768-d and neighbours are nearly tied.
- ``tight``: `common.correlated_features` with noise 0.5: tight identity clusters
  (same-identity cosine 0.67-0.83) whose random centres are mutually near-orthogonal.
  The hard case for IVF/HNSW: nothing links one cluster to the next.
- ``low-rank``: like ``tight``, but identity centres lie on a 64-dimensional subspace, as
  trained embeddings do (their intrinsic dimension is far below 768).

Each index is built once (build = add, plus k-means training for IVF); the search knobs
(``nprobe``, ``ef_search``) are then changed in place. Per row: best-of-N time to search
all queries, queries per second, search speed-up over flat, and recall@k against the
exact top-k (`GalleryIndex.recall_at_k`).

faiss uses all cores visible to OpenMP unless ``--threads`` is given; the count used is
printed, since timings scale with it.

    python benchmarks/bench_index.py [--features noisy tight low-rank] [--gallery 15913]
        [--queries 3368] [--dim 768] [--k 10] [--metric cosine] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, correlated_features  # noqa: E402

from reid_transformers.retrieval.index import MIN_POINTS_PER_LIST, GalleryIndex  # noqa: E402

# (GalleryIndex settings, search-time settings measured on that one build). nlist=-1 stands
# for "more lists than identities", which tight identity clusters need (see docs/search.md).
CONFIGURATIONS: list[tuple[dict[str, object], list[tuple[str, int]]]] = [
    ({"index_type": "flat"}, [("", 0)]),
    ({"index_type": "ivf"}, [("nprobe", 16), ("nprobe", 64)]),
    ({"index_type": "ivf", "nlist": -1}, [("nprobe", 16)]),
    ({"index_type": "hnsw"}, [("ef_search", 64), ("ef_search", 256)]),
    ({"index_type": "hnsw", "ef_construction": 40}, [("ef_search", 64)]),
]
NUM_IDENTITIES = 751
NUM_CAMERAS = 6


def low_rank_features(
    num_query: int, num_gallery: int, dim: int, *, rank: int = 64, noise: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) embeddings whose identity centres span a ``rank``-dim subspace.

    Per-dimension variance of the centres is 1 (as in `common.correlated_features`), plus a
    per-camera shift of scale 0.5 and isotropic Gaussian noise of scale ``noise``.
    """
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)) / np.sqrt(rank)
    centres = rng.normal(size=(NUM_IDENTITIES, rank)) @ basis
    camera_shift = 0.5 * rng.normal(size=(NUM_CAMERAS, dim))

    def embed(count: int) -> np.ndarray:
        pids = rng.integers(0, NUM_IDENTITIES, size=count)
        cameras = rng.integers(0, NUM_CAMERAS, size=count)
        x = centres[pids] + camera_shift[cameras] + noise * rng.normal(size=(count, dim))
        return x.astype(np.float32)

    return embed(num_query), embed(num_gallery)


def make_features(name: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if name == "low-rank":
        return low_rank_features(args.queries, args.gallery, args.dim)
    noise = None if name == "noisy" else 0.5
    queries, gallery, *_ = correlated_features(
        args.queries, args.gallery, NUM_IDENTITIES, NUM_CAMERAS, args.dim, noise=noise
    )
    return queries, gallery


def describe(index: GalleryIndex, *, auto_nlist: bool) -> str:
    if index.index_type == "ivf":
        return f"ivf nlist={index.nlist}{' (auto)' if auto_nlist else ''}"
    if index.index_type == "hnsw":
        return f"hnsw M={index.hnsw_m} efC={index.ef_construction}"
    return index.index_type


def run(args: argparse.Namespace, features: str) -> None:
    queries, gallery = make_features(features, args)
    header = (
        f"{'index':<32} {'build s':>8} {'search s':>9} {'queries/s':>10} "
        f"{'vs flat':>8} {f'recall@{args.k}':>10}"
    )
    print(f"\nfeatures={features}")
    print(header)
    print("-" * len(header))
    flat_search_s: float | None = None
    for settings, knobs in CONFIGURATIONS:
        if settings.get("nlist") == -1:
            settings = {**settings, "nlist": min(1024, args.gallery // MIN_POINTS_PER_LIST)}
        index = GalleryIndex(args.dim, metric=args.metric, **settings)  # type: ignore[arg-type]
        start = time.perf_counter()
        index.add(gallery)
        build_s = time.perf_counter() - start
        for position, (knob, value) in enumerate(knobs):
            if knob:
                setattr(index, knob, value)
            search_s, _ = best_time(
                lambda index=index: index.search(queries, k=args.k), args.repeats
            )
            flat_search_s = flat_search_s or search_s
            recall = index.recall_at_k(queries, k=args.k)
            name = describe(index, auto_nlist="nlist" not in settings)
            name += f" {knob}={value}" if knob else ""
            build = f"{build_s:>8.2f}" if position == 0 else f"{'same':>8}"
            print(
                f"{name:<32} {build} {search_s:>9.3f} {args.queries / search_s:>10.0f} "
                f"{flat_search_s / search_s:>7.2f}x {recall:>10.4f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--metric", choices=("cosine", "euclidean", "inner_product"), default="cosine"
    )
    parser.add_argument(
        "--features",
        choices=("noisy", "tight", "low-rank"),
        nargs="+",
        default=["low-rank"],
    )
    parser.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    parser.add_argument("--repeats", type=int, default=3, help="search timing: best of N")
    args = parser.parse_args()

    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    print(
        f"GalleryIndex: {args.gallery} gallery x {args.queries} queries, {args.dim}-d, "
        f"k={args.k}, metric={args.metric}, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    for features in args.features:
        run(args, features)


if __name__ == "__main__":
    main()
