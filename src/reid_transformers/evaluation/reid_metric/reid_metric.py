"""Entry point for ``evaluate.load(<this folder>)``; the metric lives in the package.

``evaluate`` imports this script and takes the first ``evaluate.EvaluationModule``
subclass it finds, so only the metric class may be imported here by name.
"""

import evaluate  # noqa: F401  (evaluate checks a loading script's imports are installed)

from reid_transformers.evaluation.metric import ReIDMetric  # noqa: F401
