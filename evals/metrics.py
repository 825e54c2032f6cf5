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
import hashlib
import json
import re
import threading
from typing import Any

from restpg_dspy.errors import UsageError


def metric_name(metric: Any) -> str:
    """The name a metric's values are reported under (its ``__name__``)."""
    return getattr(metric, "__name__", None) or type(metric).__name__


def metric_identity(metric: Any) -> Any:
    """A JSON-able identity of everything that decides a metric's values, for cache keys and run directories.

    A function is identified by its module and qualified name; an object with an ``identity()`` method (such as
    :class:`LLMJudge`, whose identity holds its judge LM, rubric and scoring mode) by what that returns; any other
    callable object by its class and its public attributes.

    Example:
        >>> from restpg_dspy.evals import rouge_l
        >>> metric_identity(rouge_l)
        'restpg_dspy.evals.metrics.rouge_l'
    """
    if hasattr(metric, "identity"):
        return metric.identity()
    if isinstance(metric, functools.partial):
        return {
            "partial": metric_identity(metric.func),
            "args": _jsonable(metric.args),
            "kwargs": _jsonable(metric.keywords),
        }
    if hasattr(metric, "__qualname__"):
        return f"{metric.__module__}.{metric.__qualname__}"
    public = {k: v for k, v in sorted(vars(metric).items()) if not k.startswith("_")}
    return {"metric": f"{type(metric).__module__}.{type(metric).__qualname__}", "attributes": _jsonable(public)}


def metric_key(metric: Any) -> str:
    """A short hash of :func:`metric_identity`, for cache keys."""
    return hashlib.sha256(json.dumps(metric_identity(metric), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    import dspy

    from restpg_dspy.serving.backends import lm_identity

    def default(item: Any) -> Any:
        if isinstance(item, dspy.BaseLM):
            return lm_identity(item)
        return metric_identity(item) if callable(item) else type(item).__qualname__

    return json.loads(json.dumps(value, default=default, sort_keys=True))


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
            raise UsageError("a weighted mean needs at least one metric, each with a positive weight")
        self.weights = dict(weights)
        names = [metric_name(m) for m in self.weights]
        equal = len(set(self.weights.values())) == 1
        self.__name__ = "+".join(
            n if equal else f"{w:g}*{n}" for n, w in zip(names, self.weights.values(), strict=True)
        )

    def identity(self) -> dict[str, Any]:
        return {"metric": "weighted_mean", "parts": [[metric_identity(m), w] for m, w in self.weights.items()]}

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        total = sum(self.weights.values())
        return sum(w * float(metric(example, prediction)) for metric, w in self.weights.items()) / total
