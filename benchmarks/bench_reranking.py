"""Benchmark k-reciprocal re-ranking: ours (default precision) vs ours in plain float32 vs
the usual dense numpy implementation.

Run ``python benchmarks/bench_reranking.py`` (Market-1501 scale by default: 3,368 queries x
15,913 gallery, 2048-d; ``--dataset msmt17`` for 11,659 x 82,161). Every variant runs in its
own child process, which reports its own peak resident memory (``VmHWM``; on CUDA also the
peak of allocated GPU memory).
Seconds cover only the re-ranking call, not data loading or imports; peak memory covers the
whole child, including the interpreter, torch and the input arrays (the "before" column is
the child's peak just before the call).

Variants: ``ours`` is ``k_reciprocal_rerank`` with its default ``precision`` (bfloat16
candidates settled in float32 on CPUs with bfloat16 matrix products), ``float32`` the same
function with ``precision="float32"`` (the plain path, the baseline for speed and memory at
any scale), and ``baseline`` the widely used formulation written out as usual: dense
``N x N`` float32 distance, full ``argsort``, per-item loops for the k-reciprocal sets and
an inverted index for the Jaccard term. That one needs ``N x N`` memory (too much at MSMT17
scale), so ``--baseline-scale 0.25`` runs it (and a matching run of ours, for the agreement
check) on the first quarter of queries and gallery instead. ``--device cuda`` runs ours on
CUDA tensors.
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

VARIANTS = ("ours", "float32", "baseline")
DATASETS = {"market1501": (3368, 15913, 751), "msmt17": (11659, 82161, 3060)}


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


def run_child(
    variant: str, workdir: Path, scale: float, chunk_size: int | None, device: str
) -> None:
    """Child process body: load inputs, time one call, save output and timings."""
    query = np.load(workdir / "query.npy")
    gallery = np.load(workdir / "gallery.npy")
    query = query[: max(1, round(scale * len(query)))]
    gallery = gallery[: max(1, round(scale * len(gallery)))]
    if variant == "baseline":

        def rerank() -> np.ndarray:
            return baseline_rerank(query, gallery)
    else:
        import torch

        from reid_transformers.evaluation.reranking import k_reciprocal_rerank

        precision = "float32" if variant == "float32" else "auto"
        inputs = [torch.from_numpy(x).to(device) for x in (query, gallery)]

        def rerank() -> np.ndarray:
            # The baseline squares Euclidean distances; the same metric keeps the
            # agreement check meaningful (speed does not depend on it).
            result = k_reciprocal_rerank(
                *inputs, metric="euclidean", chunk_size=chunk_size, precision=precision
            )
            return result.cpu().numpy()

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
        "gpu_peak_mb": cuda_peak_mb(device),
        "shape": list(result.shape),
    }
    (workdir / f"{tag}.json").write_text(json.dumps(report))


def cuda_peak_mb(device: str) -> float | None:
    """Peak allocated CUDA memory of this process in MB, or None off CUDA."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def measure(
    variant: str,
    workdir: Path,
    scale: float,
    chunk_size: int | None,
    threads: int | None,
    device: str,
) -> dict:
    """Run one variant in a child process and return its timings and peak RSS (MB)."""
    command = [sys.executable, __file__, "--child", variant, "--workdir", str(workdir)]
    command += ["--scale", str(scale), "--device", device]
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
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="market1501",
        help="sets queries, gallery and identities to that test split's sizes",
    )
    parser.add_argument("--queries", type=int, default=None, help="overrides --dataset")
    parser.add_argument("--gallery", type=int, default=None, help="overrides --dataset")
    parser.add_argument("--ids", type=int, default=None, help="identities; overrides --dataset")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="torch device for ours, e.g. cuda")
    parser.add_argument("--skip-float32", action="store_true", help="skip the float32 variant")
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
        run_child(args.child, args.workdir, args.scale, args.chunk_size, args.device)
        return
    defaults = dict(zip(("queries", "gallery", "ids"), DATASETS[args.dataset], strict=True))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
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

        def run(variant: str, scale: float) -> dict:
            chunk_size = None if variant == "baseline" else args.chunk_size
            return measure(variant, workdir, scale, chunk_size, args.threads, args.device)

        runs = [run("ours", 1.0)]
        if not args.skip_float32:
            runs.append(run("float32", 1.0))
        if not args.skip_baseline:
            if args.baseline_scale != 1.0:
                runs.append(run("ours", args.baseline_scale))
            runs.append(run("baseline", args.baseline_scale))
        scale = args.baseline_scale

        header = ("variant", "Q x G", "seconds", "CPU s", "peak MB", "before MB", "GPU MB")
        print("\n{:<10}{:>13}{:>10}{:>8}{:>10}{:>11}{:>9}".format(*header))
        for report in runs:
            items = "x".join(str(n) for n in report["shape"])
            gpu = report["gpu_peak_mb"]
            print(
                f"{report['variant']:<10}{items:>13}{report['seconds']:>10.2f}"
                f"{report['cpu_seconds']:>8.1f}{report['peak_mb']:>10.0f}"
                f"{report['before_mb']:>11.0f}{'-' if gpu is None else f'{gpu:.0f}':>9}"
            )
        print()
        if not args.skip_float32:
            compare(workdir, runs[0], runs[1], "float32")
        if not args.skip_baseline:
            ours = next(r for r in runs if r["variant"] == "ours" and r["scale"] == scale)
            compare(workdir, ours, runs[-1], "baseline")


def compare(workdir: Path, ours: dict, other: dict, name: str) -> None:
    """Print ours / other time and peak-memory ratios and their largest difference."""
    scale = f"{ours['scale']:g}"
    theirs = np.load(workdir / f"{other['variant']}-{scale}.npy")
    diff = np.abs(np.load(workdir / f"ours-{scale}.npy") - theirs)
    print(
        f"ours / {name} at {ours['shape'][0]}x{ours['shape'][1]}: "
        f"time {ours['seconds'] / other['seconds']:.3f}, "
        f"peak memory {ours['peak_mb'] / other['peak_mb']:.3f}; "
        f"max |ours - {name}| = {diff.max():.3g}, "
        f"entries differing by more than 1e-5: {np.mean(diff > 1e-5):.2e}"
    )


if __name__ == "__main__":
    main()
