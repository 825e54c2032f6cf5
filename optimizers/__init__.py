"""REST-PG and its baselines as DSPy optimizers (importable as ``restpg_dspy.optimizers``)."""
