"""Metrics and evaluation (importable as ``restpg_dspy.evals``)."""

from restpg_dspy.evals.metrics import rouge_1, rouge_l

__all__ = ["rouge_1", "rouge_l"]
