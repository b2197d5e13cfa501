"""Shared helpers for the benchmark scripts: synthetic re-ID features and timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def correlated_features(
    num_query: int,
    num_gallery: int,
    num_identities: int,
    num_cameras: int,
    dim: int,
    seed: int = 0,
    noise: float | None = None,
    distractor_fraction: float = 0.15,
):
    """Random embeddings that retrieve like a decent re-ID model (mAP ~0.7, rank-1 ~0.97).

    Each image is its identity's centre plus a per-camera shift plus Gaussian noise; the
    noise scales with ``dim ** 0.25`` so the difficulty is similar at 768-d and 2048-d.
    Gallery pids include ~15% distractors (pid 0).

    Returns ``(query (Q, dim), gallery (G, dim), q_pids, g_pids, q_camids, g_camids)``.
    """
    rng = np.random.default_rng(seed)
    if noise is None:
        noise = 2.1 * (dim / 768) ** 0.25
    centres = rng.normal(size=(num_identities + 1, dim)).astype(np.float32)
    cam_shift = 0.5 * rng.normal(size=(num_cameras, dim)).astype(np.float32)
    q_pids = rng.integers(1, num_identities + 1, size=num_query)
    g_pids = np.where(
        rng.random(num_gallery) < distractor_fraction,
        0,
        rng.integers(1, num_identities + 1, size=num_gallery),
    )
    q_cams = rng.integers(0, num_cameras, size=num_query)
    g_cams = rng.integers(0, num_cameras, size=num_gallery)

    def embed(pids, cams):
        # Filled in blocks so generating MSMT17-sized sets costs little beyond the output.
        x = np.empty((len(pids), dim), dtype=np.float32)
        for start in range(0, len(pids), 8192):
            block = slice(start, start + 8192)
            x[block] = centres[pids[block]]
            x[block] += cam_shift[cams[block]]
            x[block] += noise * rng.standard_normal(size=x[block].shape, dtype=np.float32)
        return x

    return embed(q_pids, q_cams), embed(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of this process, in MB.

    Unlike ``ru_maxrss``, the peak is reset by exec, so a child process does not inherit
    its parent's high-water mark.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def best_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Smallest wall time in seconds over ``repeats`` calls, and the last call's result."""
    times = []
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def inference_seconds(
    call: Callable[[], Any], dtype: torch.dtype = torch.float32, repeats: int = 2,
    device: str | torch.device = "cpu",
) -> float:
    """Best wall time of ``call()`` under ``torch.inference_mode`` after one warm-up call;
    ``dtype`` other than float32 runs it under autocast; CUDA work is synchronised."""
    device = torch.device(device)
    context = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
               else contextlib.nullcontext())

    def timed_call() -> Any:
        with torch.inference_mode(), context:
            out = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    timed_call()
    return best_time(timed_call, repeats)[0]
