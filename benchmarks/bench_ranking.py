"""Ranking + metrics speed and memory, against a vectorised numpy baseline in the same run.

Market-1501 scale (3,368 queries x 15,913 gallery, 751 identities, 6 cameras): time from a
given distance matrix to CMC/mAP/mINP, ours vs a numpy reference that argsorts every full
row (the usual vectorised implementation). MSMT17 scale (11,659 x 82,161, 15 cameras):
embeddings -> metrics in a child process, reporting wall time and peak resident memory.

    python benchmarks/bench_ranking.py [--dims 768 2048] [--skip-msmt]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, correlated_features, status_mb  # noqa: E402

from reid_transformers.evaluation import (  # noqa: E402
    evaluate_distance_matrix,
    evaluate_ranking,
    pairwise_distance,
)


def numpy_full_sort_metrics(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """The usual vectorised implementation: argsort every full row, then masks and cumsums."""
    order = np.argsort(distmat, axis=1)
    same_id = g_pids[order] == q_pids[:, None]
    keep = ~(same_id & (g_cams[order] == q_cams[:, None]))
    matches = same_id & keep
    num_pos = matches.sum(1)
    valid = num_pos > 0
    valid_rank = np.cumsum(keep, axis=1)
    hits = np.cumsum(matches, axis=1)
    ap = (hits / np.maximum(valid_rank, 1) * matches).sum(1)[valid] / num_pos[valid]
    first = valid_rank[np.arange(len(order)), matches.argmax(1)][valid]
    last_col = matches.shape[1] - 1 - matches[:, ::-1].argmax(1)
    last = valid_rank[np.arange(len(order)), last_col][valid]
    cmc = np.array([(first <= k).mean() for k in range(1, max_rank + 1)])
    return ap.mean(), (num_pos[valid] / last).mean(), cmc


def market_scale(dim: int) -> list[tuple]:
    q, g, qp, gp, qc, gc = correlated_features(3368, 15913, 751, 6, dim)
    dist = pairwise_distance(q, g).numpy()
    ours_s, ours = best_time(lambda: evaluate_distance_matrix(dist, qp, gp, qc, gc), 3)
    base_s, (base_map, base_minp, base_cmc) = best_time(
        lambda: numpy_full_sort_metrics(dist, qp, gp, qc, gc), 1
    )
    agree = max(abs(ours.mean_ap - base_map), abs(ours.mean_inp - base_minp),
                float(np.abs(ours.cmc - base_cmc).max()))
    return [
        (f"market {dim}-d", "numpy full argsort", base_s, 1.0, base_map),
        (f"market {dim}-d", "reid_transformers", ours_s, base_s / ours_s, ours.mean_ap),
        (f"market {dim}-d", "max |difference|", agree, None, None),
    ]


def _msmt_child(dim: int, queue) -> None:
    q, g, qp, gp, qc, gc = correlated_features(11659, 82161, 3060, 15, dim)
    before_mb = status_mb("VmRSS")
    start = time.perf_counter()
    result = evaluate_ranking(q, g, qp, gp, qc, gc)
    elapsed = time.perf_counter() - start
    peak_mb = status_mb("VmHWM")
    inputs_mb = (q.nbytes + g.nbytes) / 2**20
    queue.put((elapsed, peak_mb, before_mb, inputs_mb, result.mean_ap))


def msmt_scale(dim: int) -> list[tuple]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_msmt_child, args=(dim, queue))
    proc.start()
    elapsed, peak_mb, before_mb, inputs_mb, mean_ap = queue.get()
    proc.join()
    variant = (
        f"embed->metrics: peak RSS {peak_mb:.0f} MB (before {before_mb:.0f}, "
        f"embeddings {inputs_mb:.0f})"
    )
    return [(f"msmt17 {dim}-d", variant, elapsed, None, mean_ap)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 2048])
    parser.add_argument("--skip-msmt", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for dim in args.dims:
        rows += market_scale(dim)
    if not args.skip_msmt:
        rows += msmt_scale(args.dims[0])
    print(f"{'setting':<16} {'variant':<55} {'seconds':>9} {'speed-up':>9} {'mAP':>7}")
    for setting, variant, seconds, ratio, mean_ap in rows:
        ratio_s = f"{ratio:8.1f}x" if ratio is not None else ""
        map_s = f"{mean_ap:7.4f}" if mean_ap is not None else ""
        secs = f"{seconds:9.3f}" if seconds >= 1e-3 else f"{seconds:9.1e}"
        print(f"{setting:<16} {variant:<55} {secs} {ratio_s:>9} {map_s:>7}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
