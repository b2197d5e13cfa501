"""`evaluate` metric for re-ID retrieval (CMC / mAP / mINP, optional re-ranking).

``ReIDMetric`` is a regular :class:`evaluate.Metric`, loadable offline with
``evaluate.load(reid_transformers.evaluation.METRIC_PATH)``. Unlike most metrics it keeps
what it is given as numpy arrays in memory instead of writing them to an Arrow cache:
streaming float embeddings through Arrow costs seconds per 20k x 768 batch and buys nothing
here, because retrieval needs every query and gallery embedding at once anyway.

In distributed evaluation gather the embeddings first (e.g.
``accelerator.gather_for_metrics``) and compute on one process.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch

from .ranking import DISTANCE_METRICS, evaluate_distance_matrix, evaluate_ranking
from .reranking import k_reciprocal_rerank

METRIC_PATH = str(Path(__file__).with_name("reid_metric"))

_DESCRIPTION = """\
Person re-identification retrieval metrics under the Market-1501 protocol: for every query,
gallery images of the same identity taken by the same camera (and junk, identity -1) are
ignored; the rest is ranked by distance. Reports CMC rank-k accuracy, mean average precision
(mAP) and mean inverse negative penalty (mINP), all in [0, 1]. Queries without any true
match in the gallery are skipped and counted. Optional k-reciprocal re-ranking
(Zhong et al., CVPR 2017).
"""

_CITATION = """\
@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and Wang, Jingdong
          and Tian, Qi},
  booktitle={ICCV},
  year={2015}
}
@article{ye2021deep,
  title={Deep Learning for Person Re-identification: A Survey and Outlook},
  author={Ye, Mang and Shen, Jianbing and Lin, Gaojie and Xiang, Tao and Shao, Ling
          and Hoi, Steven C. H.},
  journal={IEEE TPAMI},
  year={2021}
}
"""

_KWARGS_DESCRIPTION = """\
Args (to `add_batch` and/or `compute`, all keyword-only):
    query_embeddings: (Q, D) float array; query_pids, query_camids: (Q,) integers.
    gallery_embeddings: (G, D) float array; gallery_pids, gallery_camids: (G,) integers.
Options (to `compute`):
    distance: "cosine" (default; the package-wide default, also the CLI's) or "euclidean".
    max_rank: length of the returned CMC curve (default 50, clipped to the gallery size).
    ranks: which rank-k values to report (default (1, 5, 10)).
    rerank: apply k-reciprocal re-ranking (default False), with k1=20, k2=6,
        lambda_value=0.3 unless given.
Returns:
    mAP, mINP, rank-k for each requested k (floats in [0, 1]), cmc (list of floats),
    num_valid_queries and num_skipped_queries (ints).
Example:
    >>> import evaluate
    >>> from reid_transformers.evaluation import METRIC_PATH
    >>> metric = evaluate.load(METRIC_PATH)
    >>> metric.add_batch(query_embeddings=q, query_pids=qp, query_camids=qc)
    >>> metric.add_batch(gallery_embeddings=g, gallery_pids=gp, gallery_camids=gc)
    >>> metric.compute()["mAP"]
"""

_SIDES = ("query", "gallery")
_FIELDS = ("embeddings", "pids", "camids")


def _to_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{name} could not be converted to a numeric array")
    return array


class ReIDMetric(evaluate.Metric):
    """Retrieval metrics for re-ID; see the module docstring and ``inputs_description``."""

    def _info(self) -> evaluate.MetricInfo:
        features = {}
        for side in _SIDES:
            features[f"{side}_embeddings"] = datasets.Sequence(datasets.Value("float32"))
            features[f"{side}_pids"] = datasets.Value("int64")
            features[f"{side}_camids"] = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://github.com/zhunzhong07/person-re-ranking"],
        )

    def _buffers(self) -> dict[str, dict[str, list[np.ndarray]]]:
        if not hasattr(self, "_stored"):
            self._stored = {side: {f: [] for f in _FIELDS} for side in _SIDES}
        return self._stored

    def add_batch(self, **kwargs) -> None:
        """Store a batch of query and/or gallery items in memory.

        Give all three of ``<side>_embeddings`` ``(B, D)``, ``<side>_pids`` ``(B,)`` and
        ``<side>_camids`` ``(B,)`` for ``side`` in ``query`` / ``gallery``; numpy, torch or
        lists. Calls accumulate until :meth:`compute`.
        """
        unknown = sorted(set(kwargs) - {f"{s}_{f}" for s in _SIDES for f in _FIELDS})
        if unknown:
            raise ValueError(
                f"unknown inputs {unknown}; expected query_/gallery_ + embeddings/pids/camids"
            )
        buffers = self._buffers()
        for side in _SIDES:
            given = {f: kwargs.get(f"{side}_{f}") for f in _FIELDS}
            if all(v is None for v in given.values()):
                continue
            missing = [f"{side}_{f}" for f, v in given.items() if v is None]
            if missing:
                raise ValueError(f"{side} batch is missing {missing}")
            emb = _to_numpy(given["embeddings"], f"{side}_embeddings")
            if emb.ndim != 2:
                raise ValueError(
                    f"{side}_embeddings must be 2-D (batch, dim), got shape {emb.shape}"
                )
            pids = _to_numpy(given["pids"], f"{side}_pids").reshape(-1)
            camids = _to_numpy(given["camids"], f"{side}_camids").reshape(-1)
            if not len(emb) == len(pids) == len(camids):
                raise ValueError(
                    f"{side} batch sizes differ: {len(emb)} embeddings, {len(pids)} pids, "
                    f"{len(camids)} camids"
                )
            stored = buffers[side]["embeddings"]
            if stored and stored[0].shape[1] != emb.shape[1]:
                raise ValueError(
                    f"{side}_embeddings dimension {emb.shape[1]} differs from the "
                    f"{stored[0].shape[1]} of earlier batches"
                )
            stored.append(emb.astype(np.float32, copy=False))
            buffers[side]["pids"].append(pids.astype(np.int64))
            buffers[side]["camids"].append(camids.astype(np.int64))

    def add(self, **kwargs) -> None:
        """Store one item: ``<side>_embeddings`` ``(D,)``, ``<side>_pids`` and camids scalars."""
        batched = {}
        for key, value in kwargs.items():
            value = _to_numpy(value, key)
            batched[key] = value[None] if key.endswith("embeddings") else value.reshape(1)
        self.add_batch(**batched)

    def __len__(self) -> int:
        buffers = self._buffers()
        return sum(len(p) for side in _SIDES for p in buffers[side]["pids"])

    def compute(
        self,
        *,
        distance: str = "cosine",
        max_rank: int = 50,
        ranks: tuple[int, ...] = (1, 5, 10),
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        **inputs,
    ) -> dict:
        """Metrics over everything added so far plus ``inputs``; then clears the store.

        ``inputs`` takes the same keywords as :meth:`add_batch`. See ``inputs_description``
        for the options and the returned keys.
        """
        if distance not in DISTANCE_METRICS:
            raise ValueError(f"distance must be one of {DISTANCE_METRICS}, got {distance!r}")
        if inputs:
            self.add_batch(**inputs)
        buffers = self._buffers()
        arrays = {}
        for side in _SIDES:
            if not buffers[side]["embeddings"]:
                raise ValueError(f"no {side} items were added; nothing to evaluate")
            for f in _FIELDS:
                arrays[f"{side}_{f}"] = np.concatenate(buffers[side][f])
        self._stored = {side: {f: [] for f in _FIELDS} for side in _SIDES}
        return self._compute(
            distance=distance, max_rank=max_rank, ranks=ranks, rerank=rerank, k1=k1, k2=k2,
            lambda_value=lambda_value, **arrays,
        )

    def _compute(
        self,
        *,
        query_embeddings: np.ndarray,
        query_pids: np.ndarray,
        query_camids: np.ndarray,
        gallery_embeddings: np.ndarray,
        gallery_pids: np.ndarray,
        gallery_camids: np.ndarray,
        distance: str,
        max_rank: int,
        ranks: tuple[int, ...],
        rerank: bool,
        k1: int,
        k2: int,
        lambda_value: float,
    ) -> dict:
        labels = (query_pids, gallery_pids, query_camids, gallery_camids)
        if rerank:
            distances = k_reciprocal_rerank(
                query_embeddings, gallery_embeddings, k1=k1, k2=k2, lambda_value=lambda_value,
                metric=distance,
            )
            result = evaluate_distance_matrix(distances, *labels, max_rank=max_rank)
        else:
            result = evaluate_ranking(
                query_embeddings, gallery_embeddings, *labels, metric=distance, max_rank=max_rank
            )
        out = result.as_dict(ranks=ranks)
        out["cmc"] = result.cmc.tolist()
        return out
