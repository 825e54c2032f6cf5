"""Personalized text generation as DSPy programs, trained with REST-PG.

Example:
    >>> import restpg_dspy
    >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> student("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = ["lm"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # DSPy is imported on first use of ``lm``, so the model and generation modules load without it.
    if name == "lm":
        from restpg_dspy.backends import lm

        return lm
    raise AttributeError(f"module 'restpg_dspy' has no attribute {name!r}")
