"""Retrieval evaluation: CMC / mAP / mINP, k-reciprocal re-ranking, an `evaluate` metric,
and the evaluation of a saved checkpoint."""

from .checkpoint import CheckpointEvaluation, evaluate_checkpoint
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
    "CheckpointEvaluation",
    "DISTANCE_METRICS",
    "METRIC_PATH",
    "RankingResult",
    "ReIDMetric",
    "evaluate_checkpoint",
    "evaluate_distance_matrix",
    "evaluate_ranking",
    "k_reciprocal_rerank",
    "pairwise_distance",
]
