"""Personalized text generation as DSPy programs, trained with REST-PG.

Example:
    >>> import restpg_dspy
    >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> student("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from restpg_dspy.backends import lm

__all__ = ["lm"]
__version__ = "0.1.0"
