"""Benchmark k-reciprocal re-ranking: ours vs the usual dense numpy implementation.

Run ``python benchmarks/bench_reranking.py`` (Market-1501 scale by default: 3,368 queries x
15,913 gallery, 768-d). Every variant runs in its own child process, which reports its own
peak resident memory (``VmHWM``).
Seconds cover only the re-ranking call, not data loading or imports; peak memory covers the
whole child, including the interpreter, torch and the input arrays (the "before" column is
the child's peak just before the call).

The baseline is the widely used formulation written out as usual: dense ``N x N``
float32 distance, full ``argsort``, per-item loops for the k-reciprocal sets and an
inverted index for the Jaccard term. At full scale it needs about a minute and several GB.
``--baseline-scale 0.25`` runs it (and a matching run of ours, for the agreement check) on
the first quarter of queries and gallery instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import correlated_features, status_mb  # noqa: E402

VARIANTS = ("ours", "baseline")


def _reciprocal(initial_rank: np.ndarray, item: int, k: int) -> np.ndarray:
    """k-reciprocal neighbours of ``item`` within the first ``k + 1`` of each ranking."""
    forward = initial_rank[item, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[np.where(backward == item)[0]]


def baseline_rerank(
    query: np.ndarray,
    gallery: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """The usual dense numpy re-ranking (squared Euclidean, float32), shape ``(Q, G)``."""
    features = np.concatenate([query, gallery]).astype(np.float32)
    num_query, num_items = len(query), len(features)
    sq = np.einsum("ij,ij->i", features, features)
    dist = sq[:, None] + sq[None, :] - 2 * (features @ features.T)
    np.maximum(dist, 0, out=dist)
    original = np.transpose(dist / np.max(dist, axis=0))
    del dist
    initial_rank = np.argsort(original).astype(np.int32)
    half = int(np.around(k1 / 2.0))

    weights = np.zeros_like(original, dtype=np.float32)
    for i in range(num_items):
        recip = _reciprocal(initial_rank, i, k1)
        expansion = recip
        for candidate in recip:
            candidate_recip = _reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(candidate_recip, recip)) > 2.0 / 3 * len(candidate_recip):
                expansion = np.append(expansion, candidate_recip)
        expansion = np.unique(expansion)
        w = np.exp(-original[i, expansion])
        weights[i, expansion] = w / np.sum(w)
    original = original[:num_query]
    if k2 != 1:
        expanded = np.zeros_like(weights, dtype=np.float32)
        for i in range(num_items):
            expanded[i] = np.mean(weights[initial_rank[i, :k2]], axis=0)
        weights = expanded
        del expanded
    del initial_rank

    inverted = [np.where(weights[:, k] != 0)[0] for k in range(num_items)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(num_items, dtype=np.float32)
        nonzero = np.where(weights[i] != 0)[0]
        for k in nonzero:
            rows = inverted[k]
            shared[rows] += np.minimum(weights[i, k], weights[rows, k])
        jaccard[i] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, num_query:]


def run_child(variant: str, workdir: Path, scale: float, chunk_size: int | None) -> None:
    """Child process body: load inputs, time one call, save output and timings."""
    query = np.load(workdir / "query.npy")
    gallery = np.load(workdir / "gallery.npy")
    query = query[: max(1, round(scale * len(query)))]
    gallery = gallery[: max(1, round(scale * len(gallery)))]
    if variant == "ours":
        from reid_transformers.evaluation.reranking import k_reciprocal_rerank

        def rerank() -> np.ndarray:
            return k_reciprocal_rerank(query, gallery, chunk_size=chunk_size).numpy()
    else:

        def rerank() -> np.ndarray:
            return baseline_rerank(query, gallery)

    before_mb = status_mb("VmHWM")
    start, start_cpu = time.perf_counter(), time.process_time()
    result = rerank()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    tag = f"{variant}-{scale:g}"
    np.save(workdir / f"{tag}.npy", result)
    report = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "before_mb": before_mb,
        "peak_mb": status_mb("VmHWM"),
        "shape": list(result.shape),
    }
    (workdir / f"{tag}.json").write_text(json.dumps(report))


def measure(
    variant: str, workdir: Path, scale: float, chunk_size: int | None, threads: int | None
) -> dict:
    """Run one variant in a child process and return its timings and peak RSS (MB)."""
    command = [sys.executable, __file__, "--child", variant, "--workdir", str(workdir)]
    command += ["--scale", str(scale)]
    if chunk_size is not None:
        command += ["--chunk-size", str(chunk_size)]
    env = dict(os.environ)
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    process = subprocess.Popen(command, env=env)
    if process.wait() != 0:
        raise RuntimeError(f"{variant} child failed with exit code {process.returncode}")
    report = json.loads((workdir / f"{variant}-{scale:g}.json").read_text())
    report["variant"] = variant
    report["scale"] = scale
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ids", type=int, default=751, help="number of identities")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=None, help="ours: block size")
    parser.add_argument(
        "--threads", type=int, default=None, help="BLAS/OpenMP threads for both variants"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--baseline-scale",
        type=float,
        default=1.0,
        help="fraction (0, 1] of queries and gallery the baseline runs on",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args.child, args.workdir, args.scale, args.chunk_size)
        return
    for name in ("queries", "gallery", "dim", "ids", "threads", "chunk_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            flag = name.replace("_", "-")
            parser.error(f"--{flag} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.baseline_scale <= 1:
        parser.error(f"--baseline-scale must be in (0, 1], got {args.baseline_scale}")

    with tempfile.TemporaryDirectory(prefix="bench_reranking_") as tmp:
        workdir = Path(tmp)
        query, gallery, *_ = correlated_features(
            args.queries, args.gallery, args.ids, num_cameras=6, dim=args.dim, seed=args.seed
        )
        np.save(workdir / "query.npy", query)
        np.save(workdir / "gallery.npy", gallery)
        del query, gallery
        threads = args.threads or os.cpu_count()
        print(
            f"{args.queries} queries x {args.gallery} gallery, dim {args.dim}, "
            f"{args.ids} ids, {threads} threads, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )

        runs = [measure("ours", workdir, 1.0, args.chunk_size, args.threads)]
        if not args.skip_baseline:
            if args.baseline_scale != 1.0:
                runs.append(
                    measure("ours", workdir, args.baseline_scale, args.chunk_size, args.threads)
                )
            runs.append(measure("baseline", workdir, args.baseline_scale, None, args.threads))

        header = ("variant", "Q x G", "seconds", "CPU s", "peak MB", "before MB")
        print("\n{:<10}{:>13}{:>10}{:>8}{:>10}{:>11}".format(*header))
        for run in runs:
            items = "x".join(str(n) for n in run["shape"])
            print(
                f"{run['variant']:<10}{items:>13}{run['seconds']:>10.2f}"
                f"{run['cpu_seconds']:>8.1f}{run['peak_mb']:>10.0f}{run['before_mb']:>11.0f}"
            )
        if not args.skip_baseline:
            ours, baseline = runs[-2], runs[-1]
            diff = np.abs(
                np.load(workdir / f"ours-{args.baseline_scale:g}.npy")
                - np.load(workdir / f"baseline-{args.baseline_scale:g}.npy")
            )
            print(
                f"\nours / baseline at {ours['shape'][0]}x{ours['shape'][1]}: "
                f"time {ours['seconds'] / baseline['seconds']:.3f}, "
                f"peak memory {ours['peak_mb'] / baseline['peak_mb']:.3f}\n"
                f"max |ours - baseline| = {diff.max():.3g}; "
                f"entries differing by more than 1e-5: {np.mean(diff > 1e-5):.2e}"
            )


if __name__ == "__main__":
    main()
