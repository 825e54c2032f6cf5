"""Text-overlap metrics with DSPy's metric signature ``metric(example, prediction, trace=None) -> float``.

ROUGE follows LongLaMP's evaluation: F1 of ``rouge-score`` with stemming, the prediction's ``response`` against the
example's ``output``. METEOR is nltk's, with WordNet synonyms; without WordNet only
``meteor_without_synonyms`` exists, so a number is never silently reported as METEOR.

Example:
    >>> import dspy
    >>> from restpg_dspy.evals import rouge_l
    >>> rouge_l(dspy.Example(output="the cat sat on the mat"), dspy.Prediction(response="the cat sat"))
    0.6666666666666666
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any


@functools.cache
def _scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def reference_and_response(example: Any, prediction: Any) -> tuple[str, str]:
    """``example.output`` and ``prediction.response``, the two texts every metric compares.

    Raises:
        ValueError: either one is missing or not a string.
    """
    reference = example.get("output")
    response = getattr(prediction, "response", None)
    if not isinstance(reference, str):
        raise ValueError("the example has no string 'output' to score against")
    if not isinstance(response, str):
        raise ValueError("the prediction has no string 'response' field")
    return reference, response


def rouge_1(example: Any, prediction: Any, trace: Any = None) -> float:
    """ROUGE-1 F1 (stemmed) of ``prediction.response`` against ``example.output``."""
    reference, response = reference_and_response(example, prediction)
    return _scorer("rouge1").score(reference, response)["rouge1"].fmeasure


def rouge_l(example: Any, prediction: Any, trace: Any = None) -> float:
    """ROUGE-L F1 (stemmed) of ``prediction.response`` against ``example.output``."""
    reference, response = reference_and_response(example, prediction)
    return _scorer("rougeL").score(reference, response)["rougeL"].fmeasure


_WORD = re.compile(r"\w+|[^\w\s]")
_WORDNET_LOCK = threading.Lock()


class _NoSynonyms:
    """Stands in for WordNet: METEOR then matches exact words and stems only."""

    @staticmethod
    def synsets(*args: Any, **kwargs: Any) -> list:
        return []


def _meteor(example: Any, prediction: Any, wordnet: Any) -> float:
    from nltk.translate.meteor_score import meteor_score

    reference, response = reference_and_response(example, prediction)
    return meteor_score([_WORD.findall(reference.lower())], _WORD.findall(response.lower()), wordnet=wordnet)


def meteor(example: Any, prediction: Any, trace: Any = None) -> float:
    """METEOR (nltk) with WordNet synonym matching.

    Raises:
        RuntimeError: WordNet is not installed (``make setup`` provisions it; see ``restpg_dspy.evals.wordnet``).
    """
    from restpg_dspy.evals.wordnet import load

    wordnet = load()
    if wordnet is None:
        raise RuntimeError(
            "METEOR needs WordNet, which is not installed: run `make setup` (or `python -m restpg_dspy.evals.wordnet` "
            "after installing Debian's wordnet-base and wordnet-sense-index), or use meteor_without_synonyms"
        )
    with _WORDNET_LOCK:  # nltk's WordNet reader seeks in shared file handles: concurrent lookups corrupt reads
        return _meteor(example, prediction, wordnet)


def meteor_without_synonyms(example: Any, prediction: Any, trace: Any = None) -> float:
    """METEOR with exact and stem matches only (no WordNet): not comparable to published METEOR numbers."""
    return _meteor(example, prediction, _NoSynonyms())


class WeightedMean:
    """A metric that is the weighted mean of other metrics, e.g. ROUGE-L and option accuracy as one reward.

    Args:
        weights: ``{metric: weight}``; weights are positive and need not sum to 1.

    Example:
        >>> import dspy
        >>> from restpg_dspy.evals import WeightedMean, option_accuracy, rouge_l
        >>> reward = WeightedMean({rouge_l: 1, option_accuracy: 1})
        >>> reward.__name__
        'rouge_l+option_accuracy'
        >>> options = ["the cheap inn", "a lake hut"]
        >>> example = dspy.Example(output="the cheap inn", options=options, answer="the cheap inn")
        >>> reward(example, dspy.Prediction(response="the cheap inn"))
        1.0
    """

    def __init__(self, weights: dict[Any, float]):
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError("a weighted mean needs at least one metric, each with a positive weight")
        self.weights = dict(weights)
        names = [getattr(m, "__name__", type(m).__name__) for m in self.weights]
        equal = len(set(self.weights.values())) == 1
        self.__name__ = "+".join(
            n if equal else f"{w:g}*{n}" for n, w in zip(names, self.weights.values(), strict=True)
        )

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        total = sum(self.weights.values())
        return sum(w * float(metric(example, prediction)) for metric, w in self.weights.items()) / total
