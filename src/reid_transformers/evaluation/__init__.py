"""Retrieval evaluation: CMC / mAP / mINP, k-reciprocal re-ranking, an `evaluate` metric."""

from .metric import METRIC_PATH, ReIDMetric
from .ranking import (
    DISTANCE_METRICS,
    RankingResult,
    evaluate_distance_matrix,
    evaluate_ranking,
    pairwise_distance,
)
from .reranking import k_reciprocal_rerank

__all__ = [
    "DISTANCE_METRICS",
    "METRIC_PATH",
    "RankingResult",
    "ReIDMetric",
    "evaluate_distance_matrix",
    "evaluate_ranking",
    "k_reciprocal_rerank",
    "pairwise_distance",
]
