"""Personalized DSPy programs (importable as ``restpg_dspy.programs``)."""
