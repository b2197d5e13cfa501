"""Folder that `evaluate.load` takes; see `reid_metric.py`."""
