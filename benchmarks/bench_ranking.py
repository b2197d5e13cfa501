"""Ranking + metrics speed and memory, against baselines measured in the same run.

Market-1501 scale (3,368 queries x 15,913 gallery, 751 identities, 6 cameras):

- distance matrix -> CMC/mAP/mINP, ours vs a numpy reference that argsorts every full row
  (the usual vectorised implementation);
- embeddings -> metrics, ``precision="bfloat16"`` (bfloat16 candidates, float32
  settlement) and ``precision="auto"`` (the default: whichever of the two
  ``resolve_precision`` picks) vs ``precision="float32"``, with a check that all give
  identical metrics.

The same at Market-1501 2048-d with near-useless embeddings ("market poor": an untrained
model's, where most of the gallery can precede a positive).

MSMT17 scale (11,659 x 82,161, 15 cameras, 2048-d by default): embeddings -> metrics for
each precision, each in a child process, reporting wall time and peak resident memory
beyond what the process held with the embeddings loaded.

    python benchmarks/bench_ranking.py [--dims 768 2048] [--msmt-dims 2048] [--skip-msmt]
        [--skip-poor] [--metric cosine] [--device cpu]
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
from reid_transformers.evaluation.ranking import resolve_precision  # noqa: E402

MARKET = (3368, 15913, 751, 6)
MSMT17 = (11659, 82161, 3060, 15)
POOR_NOISE = 50.0  # correlated_features noise giving mAP ~0.002: an untrained model
PRECISIONS = ("float32", "bfloat16", "auto")  # the first is the baseline of the ratios


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


def market_distance_matrix(features, dim: int, metric: str) -> list[tuple]:
    q, g, qp, gp, qc, gc = features
    dist = pairwise_distance(q, g, metric=metric).numpy()
    ours_s, ours = best_time(lambda: evaluate_distance_matrix(dist, qp, gp, qc, gc), 3)
    base_s, (base_map, base_minp, base_cmc) = best_time(
        lambda: numpy_full_sort_metrics(dist, qp, gp, qc, gc), 1
    )
    agree = max(abs(ours.mean_ap - base_map), abs(ours.mean_inp - base_minp),
                float(np.abs(ours.cmc - base_cmc).max()))
    return [
        (f"market {dim}-d", "dist matrix -> metrics: numpy full argsort", base_s, 1.0, base_map),
        (f"market {dim}-d", "dist matrix -> metrics: reid_transformers", ours_s,
         base_s / ours_s, ours.mean_ap),
        (f"market {dim}-d", "max |difference|", agree, None, None),
    ]


def label(precision: str, scale: tuple, dim: int) -> str:
    """``precision``, and for ``"auto"`` what it picks at this scale on this CPU."""
    if precision != "auto":
        return precision
    return f"auto={resolve_precision(precision, scale[0], scale[1], dim)}"


def identical(a, b) -> bool:
    """Bit-for-bit the same metrics, per-query AP included."""
    return (np.array_equal(a.cmc, b.cmc) and a.mean_inp == b.mean_inp
            and np.array_equal(a.average_precision, b.average_precision, equal_nan=True))


def market_embeddings(
    features, dim: int, metric: str, setting: str | None = None, repeats: int = 2
) -> list[tuple]:
    rows, results, times = [], {}, {}
    for precision in PRECISIONS:
        times[precision], results[precision] = best_time(
            lambda p=precision: evaluate_ranking(
                *features, metric=metric, precision=p, return_per_query=True
            ), repeats,
        )
    base = times[PRECISIONS[0]]
    for precision in PRECISIONS:
        variant = f"embed->metrics {metric} {label(precision, MARKET, dim)}"
        if precision != PRECISIONS[0]:
            same = identical(results[PRECISIONS[0]], results[precision])
            variant += f" (identical: {'yes' if same else 'NO'})"
        rows.append((setting or f"market {dim}-d", variant, times[precision],
                     base / times[precision], results[precision].mean_ap))
    return rows


def _msmt_child(dim: int, metric: str, precision: str, queue) -> None:
    q, g, qp, gp, qc, gc = correlated_features(*MSMT17, dim)
    before_mb = status_mb("VmRSS")
    start = time.perf_counter()
    result = evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, precision=precision)
    elapsed = time.perf_counter() - start
    peak_mb = status_mb("VmHWM")
    queue.put((elapsed, peak_mb - before_mb, (q.nbytes + g.nbytes) / 2**20, result.mean_ap))


def msmt_scale(dim: int, metric: str) -> list[tuple]:
    ctx = mp.get_context("spawn")
    measured = {}
    for precision in PRECISIONS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_msmt_child, args=(dim, metric, precision, queue))
        proc.start()
        measured[precision] = queue.get()
        proc.join()
    base = measured[PRECISIONS[0]][0]
    rows = []
    for precision, (elapsed, extra_mb, inputs_mb, mean_ap) in measured.items():
        variant = (f"embed->metrics {metric} {label(precision, MSMT17, dim)}: +{extra_mb:.0f} MB "
                   f"peak RSS (embeddings {inputs_mb:.0f} MB)")
        rows.append((f"msmt17 {dim}-d", variant, elapsed, base / elapsed, mean_ap))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 2048])
    parser.add_argument("--msmt-dims", type=int, nargs="+", default=[2048])
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    parser.add_argument("--skip-msmt", action="store_true")
    parser.add_argument("--skip-poor", action="store_true",
                        help="skip Market 2048-d with near-useless embeddings (mAP ~0.002)")
    parser.add_argument("--device", default="cpu",
                        help="only 'cpu': evaluate_ranking has no device option yet")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        print(f"bench_ranking: skipped, --device {args.device}: evaluate_ranking runs on "
              "the CPU only")
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, metric {args.metric}")
    rows = []
    for dim in args.dims:
        features = correlated_features(*MARKET, dim)
        rows += market_distance_matrix(features, dim, args.metric)
        rows += market_embeddings(features, dim, args.metric)
    if not args.skip_poor:
        # An untrained model's embeddings: most of the gallery can precede a positive.
        poor = correlated_features(*MARKET, 2048, noise=POOR_NOISE)
        rows += market_embeddings(poor, 2048, args.metric, "market poor", repeats=1)
    if not args.skip_msmt:
        for dim in args.msmt_dims:
            rows += msmt_scale(dim, args.metric)
    print(f"{'setting':<16} {'variant':<80} {'seconds':>9} {'speed-up':>9} {'mAP':>7}")
    for setting, variant, seconds, ratio, mean_ap in rows:
        ratio_s = f"{ratio:8.2f}x" if ratio is not None else ""
        map_s = f"{mean_ap:7.4f}" if mean_ap is not None else ""
        secs = f"{seconds:9.3f}" if seconds >= 1e-3 else f"{seconds:9.1e}"
        print(f"{setting:<16} {variant:<80} {secs} {ratio_s:>9} {map_s:>7}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
