"""Degenerate repetition: whether a generation loops, defined before any run and used everywhere it is reported.

A text **loops** when some word 6-gram occurs in it three or more times (words: lower-cased runs of letters and
digits): what greedy decoding of a small model does when it repeats a clause until its token budget runs out. The
size was set on human writing before any model output was scored: on the training records of the LongLaMP sample
(``../shared/data``: the 20 records whose ids hash lowest), a 4-gram three times flags 8 of the 80 profile abstracts,
1 of the 20 real outputs and 6 of the 20 reference (Llama-3-8B) abstracts, for repeating a technical term
("grapheme to phoneme conversion"); a 6-gram three times flags 2, 0 and 1 of them. ``loop_rate`` is the DSPy metric
whose mean over an evaluation is the share of looping responses, so it gets the same cache, table, interval and
paired difference as any other metric.

Example:
    >>> loops("we study the cat. " * 4)
    True
    >>> loops("grapheme to phoneme conversion helps; grapheme to phoneme conversion is hard; grapheme to phoneme")
    False
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

LOOP_NGRAM = 6
LOOP_TIMES = 3


def most_repeated_ngram(text: str, n: int = LOOP_NGRAM) -> tuple[tuple[str, ...] | None, int]:
    """The word ``n``-gram that occurs most often in ``text``, and how often (``(None, 0)`` for a shorter text)."""
    words = re.findall(r"\w+", text.lower())
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return counts.most_common(1)[0] if counts else (None, 0)


def loops(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> bool:
    """Whether some word ``n``-gram occurs ``times`` or more times in ``text``."""
    return most_repeated_ngram(text, n)[1] >= times


def loop_rate(example: Any, prediction: Any, trace: Any = None) -> float:
    """1.0 if the prediction's response loops (see :func:`loops`), else 0.0: its mean is the loop rate.

    Raises:
        ValueError: the prediction has no string ``response``.
    """
    response = getattr(prediction, "response", None)
    if not isinstance(response, str):
        raise ValueError("the prediction has no string 'response' field")
    return float(loops(response))
