"""GalleryIndex search speed and recall, each against a baseline measured in the same run.

Three suites (``--suite``; default ``flat trained``):

- ``flat``: exact search at Market-1501 scale, 3,368 queries x 15,913 gallery, 2048-d,
  cosine, k = 10 (`common.correlated_features`). The baseline is the GEMM floor: one
  ``torch.matmul`` of the same shapes in float32, the least any exact search must do.
  Measured: faiss's ``IndexFlatIP`` search, `GalleryIndex` flat search in float32 and with
  ``precision="bfloat16"`` (and the bfloat16 product alone), each as a multiple of the
  floor; the bfloat16 result is checked identical to the float32 one. With ``--device
  cuda`` only this suite runs, as torch on the GPU (matrix product + top-k; faiss-gpu is not
  assumed): floor, float32 and bfloat16 search.
- ``trained``: approximate indexes on the embeddings of a trained model
  (benchmarks/trained_embeddings.py: LA-Transformer, tiny preset, 768-d, a 100k+ gallery
  of 2,000 searched identities plus distractors). Reads ``--embeddings`` (default
  /tmp/reid_trained_embeddings.npz); ``--regenerate`` makes it first (about 25 minutes on
  2 cores). The baseline is exact flat search; per index: build time, search time for
  ``--trained-queries`` queries at k = 100, speed-up over flat, recall@10 and recall@100
  (`GalleryIndex.recall_at_k`).
- ``synthetic``: the approximate indexes on synthetic feature sets (``--features``) at
  Market size, 768-d, k = 10, baseline flat:

  - ``noisy``: `common.correlated_features` at its default noise (2.1 at 768-d).
    Retrieves like a decent re-ID model (mAP ~0.7), but the noise dominates (same-identity
    cosine ~0.2), so the vectors are near-isotropic in 768-d and neighbours are nearly tied.
  - ``tight``: `common.correlated_features` with noise 0.5: tight identity clusters
    (same-identity cosine 0.67-0.83) whose random centres are mutually near-orthogonal.
  - ``low-rank``: like ``tight``, but identity centres lie on a 64-dimensional subspace.

Each index is built once (build = add, plus k-means training for IVF); the search knobs
(``nprobe``, ``ef_search``) are then changed in place. Search times are the best of
``--repeats`` runs over all queries.

faiss uses all cores visible to OpenMP unless ``--threads`` is given (torch, which runs the
flat search, likewise); the counts used are printed, since timings scale with them.

    python benchmarks/bench_index.py [--suite flat trained synthetic] [--device cpu]
        [--embeddings PATH] [--regenerate] [--features noisy tight low-rank] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, correlated_features  # noqa: E402
from trained_embeddings import DEFAULT_OUTPUT, add_arguments, make_trained_embeddings  # noqa: E402

from reid_transformers.retrieval.index import MIN_POINTS_PER_LIST, GalleryIndex  # noqa: E402

# (GalleryIndex settings, search-time settings measured on that one build). nlist=-1 stands
# for "more lists than identities", which tight identity clusters need (see docs/search.md).
Configurations = list[tuple[dict[str, object], list[tuple[str, int]]]]
SYNTHETIC_CONFIGURATIONS: Configurations = [
    ({"index_type": "flat"}, [("", 0)]),
    ({"index_type": "ivf"}, [("nprobe", 16), ("nprobe", 64)]),
    ({"index_type": "ivf", "nlist": -1}, [("nprobe", 16)]),
    ({"index_type": "hnsw"}, [("ef_search", 64), ("ef_search", 256)]),
    ({"index_type": "hnsw", "ef_construction": 40}, [("ef_search", 64)]),
]
# On the 100k trained gallery: IVF at about 100 vectors per list (faiss's k-means cost grows
# with nlist, so 1,024 lists build in well under a minute on 2 cores) and HNSW with a build
# beam that keeps its build time to a few minutes; k = 100 needs ef_search >= 100.
TRAINED_CONFIGURATIONS: Configurations = [
    ({"index_type": "flat"}, [("", 0)]),
    ({"index_type": "flat", "precision": "bfloat16"}, [("", 0)]),
    (
        {"index_type": "ivf", "nlist": -1},
        [("nprobe", 8), ("nprobe", 16), ("nprobe", 32), ("nprobe", 64)],
    ),
    # Last: its build is the slowest step of the suite.
    (
        {"index_type": "hnsw", "hnsw_m": 16, "ef_construction": 80},
        [("ef_search", 128), ("ef_search", 256)],
    ),
]
NUM_IDENTITIES = 751
NUM_CAMERAS = 6
MARKET_QUERIES, MARKET_GALLERY = 3368, 15913


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


def synthetic_features(name: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "low-rank":
        return low_rank_features(MARKET_QUERIES, MARKET_GALLERY, dim)
    noise = None if name == "noisy" else 0.5
    queries, gallery, *_ = correlated_features(
        MARKET_QUERIES, MARKET_GALLERY, NUM_IDENTITIES, NUM_CAMERAS, dim, noise=noise
    )
    return queries, gallery


def describe(index: GalleryIndex, *, auto_nlist: bool) -> str:
    if index.index_type == "ivf":
        return f"ivf nlist={index.nlist}{' (auto)' if auto_nlist else ''}"
    if index.index_type == "hnsw":
        return f"hnsw M={index.hnsw_m} efC={index.ef_construction}"
    return f"flat {index.precision}"


def measure_indexes(
    queries: np.ndarray,
    gallery: np.ndarray,
    configurations: Configurations,
    *,
    search_k: int,
    recall_ks: tuple[int, ...],
    repeats: int,
) -> None:
    """One table row per (index, search knob): build s, search s (all queries, top
    ``search_k``), queries/s, speed-up over the first row (flat), recall at ``recall_ks``."""
    recall_header = "".join(f"{f'recall@{k}':>11}" for k in recall_ks)
    header = (
        f"{'index':<34} {'build s':>8} {'search s':>9} {'queries/s':>10} {'vs flat':>8}"
        f"{recall_header}"
    )
    print(header)
    print("-" * len(header))
    flat_search_s: float | None = None
    for settings, knobs in configurations:
        if settings.get("nlist") == -1:
            settings = {**settings, "nlist": min(1024, len(gallery) // MIN_POINTS_PER_LIST)}
        index = GalleryIndex(gallery.shape[1], **settings)  # type: ignore[arg-type]
        start = time.perf_counter()
        index.add(gallery)
        build_s = time.perf_counter() - start
        for position, (knob, value) in enumerate(knobs):
            if knob:
                setattr(index, knob, value)
            search_s, _ = best_time(
                lambda index=index: index.search(queries, k=search_k), repeats
            )
            flat_search_s = flat_search_s or search_s
            recalls = "".join(f"{index.recall_at_k(queries, k=k):>11.4f}" for k in recall_ks)
            name = describe(index, auto_nlist="nlist" not in settings)
            name += f" {knob}={value}" if knob else ""
            build = f"{build_s:>8.2f}" if position == 0 else f"{'same':>8}"
            print(
                f"{name:<34} {build} {search_s:>9.3f} {len(queries) / search_s:>10.0f} "
                f"{flat_search_s / search_s:>7.2f}x{recalls}",
                flush=True,
            )


def run_synthetic(args: argparse.Namespace) -> None:
    for features in args.features:
        queries, gallery = synthetic_features(features, 768)
        print(
            f"\nsynthetic features={features}: {len(gallery)} gallery x {len(queries)} "
            f"queries, 768-d, cosine, k=10"
        )
        measure_indexes(
            queries, gallery, SYNTHETIC_CONFIGURATIONS,
            search_k=10, recall_ks=(10,), repeats=args.repeats,
        )


def run_trained(args: argparse.Namespace) -> None:
    if args.regenerate:
        make_trained_embeddings(args, args.embeddings)
    if not args.embeddings.is_file():
        print(
            f"\ntrained: skipped, {args.embeddings} does not exist; make it with "
            f"--regenerate (or python benchmarks/trained_embeddings.py --output "
            f"{args.embeddings})"
        )
        return
    with np.load(args.embeddings, allow_pickle=False) as saved:
        queries = saved["query"][: args.trained_queries]
        gallery = saved["gallery"]
        settings = json.loads(str(saved["settings"]))
    print(
        f"\ntrained embeddings {args.embeddings}: {len(gallery)} gallery x {len(queries)} "
        f"queries, {gallery.shape[1]}-d, cosine, search k=100; model {settings['model']}, "
        f"its mAP on 100 queries {settings['trainer_metrics_on_100_queries']['mAP']:.3f}"
    )
    measure_indexes(
        queries, gallery, TRAINED_CONFIGURATIONS,
        search_k=100, recall_ks=(10, 100), repeats=args.repeats,
    )


def run_flat_cpu(queries: np.ndarray, gallery: np.ndarray, args: argparse.Namespace) -> None:
    q, g = torch.from_numpy(queries), torch.from_numpy(gallery)
    q_low, g_low = q.bfloat16(), g.bfloat16()
    faiss_index = faiss.IndexFlatIP(gallery.shape[1])
    faiss_index.add(gallery)
    indexes = {}
    for precision in ("float32", "bfloat16"):
        index = GalleryIndex(gallery.shape[1], precision=precision)  # type: ignore[arg-type]
        index.add(gallery)
        index.search(queries[:8], k=10)  # builds the cached norms / bfloat16 copy
        indexes[precision] = index
    calls = {
        "GEMM floor: torch.matmul float32": lambda: q @ g.T,
        "bfloat16 torch.matmul alone": lambda: q_low @ g_low.T,
        "faiss IndexFlatIP": lambda: faiss_index.search(queries, 10),
        "GalleryIndex flat, precision=float32": lambda: indexes["float32"].search(queries, 10),
        "GalleryIndex flat, precision=bfloat16": lambda: indexes["bfloat16"].search(queries, 10),
    }
    # Interleaved, best of --repeats rounds: on a shared machine each call then meets about
    # the same load as the floor it is compared with.
    seconds = {name: float("inf") for name in calls}
    results = {}
    for _ in range(args.repeats):
        for name, call in calls.items():
            elapsed, results[name] = best_time(call, 1)
            seconds[name] = min(seconds[name], elapsed)
    print_floor_table(list(seconds.items()), seconds["GEMM floor: torch.matmul float32"])
    exact, low = (results[f"GalleryIndex flat, precision={p}"] for p in ("float32", "bfloat16"))
    identical = np.array_equal(exact.indices, low.indices) and np.array_equal(
        exact.scores, low.scores
    )
    print(f"bfloat16 result identical to float32 (indices and scores): {identical}")


def run_flat_cuda(queries: np.ndarray, gallery: np.ndarray, args: argparse.Namespace) -> None:
    """Torch on the GPU: matrix product + top-k, the flat search without faiss-gpu."""
    q = torch.from_numpy(queries).cuda()
    g = torch.from_numpy(gallery).cuda()

    def timed(call) -> float:
        def synchronised() -> None:
            call()
            torch.cuda.synchronize()

        synchronised()
        return best_time(synchronised, args.repeats)[0]

    floor_s = timed(lambda: q @ g.T)
    q_low, g_low = q.bfloat16(), g.bfloat16()
    rows = [
        ("GEMM floor: torch.matmul float32", floor_s),
        ("torch float32 matmul + topk", timed(lambda: (q @ g.T).topk(10, dim=1))),
        ("torch bfloat16 matmul + topk", timed(lambda: (q_low @ g_low.T).topk(10, dim=1))),
    ]
    print_floor_table(rows, floor_s)


def print_floor_table(rows: list[tuple[str, float]], floor_s: float) -> None:
    header = f"{'search':<40} {'seconds':>9} {'vs floor':>9}"
    print(header)
    print("-" * len(header))
    for name, seconds in rows:
        print(f"{name:<40} {seconds:>9.3f} {seconds / floor_s:>8.2f}x", flush=True)


def run_flat(args: argparse.Namespace) -> None:
    queries, gallery, *_ = correlated_features(
        MARKET_QUERIES, MARKET_GALLERY, NUM_IDENTITIES, NUM_CAMERAS, 2048
    )
    # Normalised once here, so that every row below does the same cosine arithmetic.
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    print(
        f"\nflat (exact) search, {args.device}: {len(gallery)} gallery x {len(queries)} "
        f"queries, 2048-d, cosine, k=10, best of {args.repeats}"
    )
    if args.device == "cuda":
        run_flat_cuda(queries, gallery, args)
    else:
        run_flat_cpu(queries, gallery, args)


SUITES = {"flat": run_flat, "trained": run_trained, "synthetic": run_synthetic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), nargs="+", default=["flat", "trained"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--embeddings", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--regenerate", action="store_true", help="(re)make --embeddings first (~25 min)"
    )
    parser.add_argument("--trained-queries", type=int, default=MARKET_QUERIES)
    parser.add_argument(
        "--features",
        choices=("noisy", "tight", "low-rank"),
        nargs="+",
        default=["low-rank"],
    )
    parser.add_argument("--threads", type=int, default=None, help="faiss and torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="search timing: best of N")
    add_arguments(parser)
    args = parser.parse_args()

    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    print(
        f"bench_index: faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}"
    )
    suites = ["flat"] if args.device == "cuda" else args.suite
    for suite in suites:
        SUITES[suite](args)


if __name__ == "__main__":
    main()
