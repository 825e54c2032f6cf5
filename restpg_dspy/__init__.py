"""Personalized text generation as DSPy programs, trained with REST-PG.

Example:
    >>> import restpg_dspy
    >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> student("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = ["lm", "with_repetition_controls"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # DSPy is imported on first use of ``lm``, so the model and generation modules load without it.
    if name in ("lm", "with_repetition_controls"):
        from restpg_dspy import backends

        return getattr(backends, name)
    raise AttributeError(f"module 'restpg_dspy' has no attribute {name!r}")
