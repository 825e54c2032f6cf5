"""Text-overlap metrics with DSPy's metric signature ``metric(example, prediction, trace=None) -> float``.

ROUGE follows LongLaMP's evaluation: F1 of ``rouge-score`` with stemming, the prediction's ``response`` against the
example's ``output``.

Example:
    >>> import dspy
    >>> from restpg_dspy.evals import rouge_l
    >>> rouge_l(dspy.Example(output="the cat sat on the mat"), dspy.Prediction(response="the cat sat"))
    0.6666666666666666
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _texts(example: Any, prediction: Any) -> tuple[str, str]:
    reference = example.get("output")
    response = getattr(prediction, "response", None)
    if not isinstance(reference, str):
        raise ValueError("the example has no string 'output' to score against")
    if not isinstance(response, str):
        raise ValueError("the prediction has no string 'response' field")
    return reference, response


def rouge_1(example: Any, prediction: Any, trace: Any = None) -> float:
    """ROUGE-1 F1 (stemmed) of ``prediction.response`` against ``example.output``."""
    reference, response = _texts(example, prediction)
    return _scorer("rouge1").score(reference, response)["rouge1"].fmeasure


def rouge_l(example: Any, prediction: Any, trace: Any = None) -> float:
    """ROUGE-L F1 (stemmed) of ``prediction.response`` against ``example.output``."""
    reference, response = _texts(example, prediction)
    return _scorer("rougeL").score(reference, response)["rougeL"].fmeasure
