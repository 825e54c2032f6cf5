"""Metrics and cached evaluation runs (importable as ``restpg_dspy.evals``)."""
