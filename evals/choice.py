"""Option accuracy: did the response pick the right one of the options the request offered?

ROUGE rewards hedging (a response listing every option shares words with the right one), so tasks where the user
chooses between options, like ``implicit_choice``, are also scored on the choice itself. An option is *named* when
most (more than half) of its distinctive content words, stemmed, appear in the response; its distinctive words are
those no other option of the same request uses. The score is 1 when the right option is named and no other is.

Example:
    >>> import dspy
    >>> from restpg_dspy.evals import option_accuracy
    >>> example = dspy.Example(options=["the quiet inn by the lake", "the cheap hostel downtown"],
    ...                        answer="the cheap hostel downtown")
    >>> option_accuracy(example, dspy.Prediction(response="Book the cheap hostel, downtown is fun."))
    1.0
    >>> option_accuracy(example, dspy.Prediction(response="The cheap hostel downtown or the quiet lake inn."))
    0.0
"""

from __future__ import annotations

import functools
import re
from typing import Any

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "at",
        "by",
        "from",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "its",
        "i",
        "my",
        "me",
        "we",
        "our",
        "you",
        "your",
        "he",
        "his",
        "her",
        "she",
        "they",
        "their",
        "this",
        "that",
        "there",
        "here",
        "as",
        "so",
        "but",
        "not",
        "no",
        "do",
        "all",
        "one",
        "has",
        "have",
        "had",
        "which",
        "what",
    ]
)


# A post number followed by something on its line ("Post [2] shows ...", "[2] shows ..."): a bare list of
# numbers, as an untrained model writes ("[1]\n\n[2]"), cites nothing.
_POST_CITATION = re.compile(r"\[\d+\](?![^\S\n]*(?:\n|$|\[))")


@functools.cache
def _tokenizer() -> Any:
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=True)


def content_words(text: str) -> set[str]:
    """Stemmed, lower-cased words of ``text`` without stop words (ROUGE's tokenizer and stemmer)."""
    return {word for word in _tokenizer().tokenize(text) if word not in STOP_WORDS}


def named_options(response: str, options: list[str]) -> list[str]:
    """The options that ``response`` names (more than half of each one's distinctive words appear in it)."""
    words = [content_words(option) for option in options]
    said = content_words(response)
    named = []
    for index, option in enumerate(options):
        distinctive = words[index] - set().union(*(w for i, w in enumerate(words) if i != index))
        if distinctive and len(distinctive & said) * 2 > len(distinctive):
            named.append(option)
    return named


def option_accuracy(example: Any, prediction: Any, trace: Any = None) -> float:
    """1.0 when ``prediction.response`` names ``example.answer`` and no other of ``example.options``, else 0.0.

    Raises:
        ValueError: the example has no ``options`` list holding its ``answer``, or the prediction no ``response``.
    """
    options, answer = example.get("options"), example.get("answer")
    if not isinstance(options, list) or answer not in options:
        raise ValueError("option_accuracy needs an example with 'options' (a list) that holds its 'answer'")
    response = getattr(prediction, "response", None)
    if not isinstance(response, str):
        raise ValueError("the prediction has no string 'response' field")
    return float(named_options(response, options) == [answer])


def notes_choice(example: Any, notes: str) -> dict[str, bool]:
    """What reasoning ``notes`` say about ``example``'s options, to judge a teacher's notes before training on them.

    Returns:
        ``names_answer_only`` (the right option and no other), ``names_wrong_option`` (any other option),
        ``names_no_option`` and ``cites_post`` (a numbered profile post with something said about it).

    Example:
        >>> import dspy
        >>> example = dspy.Example(options=["the quiet inn by the lake", "the cheap hostel downtown"],
        ...                        answer="the cheap hostel downtown")
        >>> notes_choice(example, "Post [2] shows money is tight, so: the cheap hostel downtown.")
        {'names_answer_only': True, 'names_wrong_option': False, 'names_no_option': False, 'cites_post': True}
    """
    options, answer = example.get("options"), example.get("answer")
    if not isinstance(options, list) or answer not in options:
        raise ValueError("notes_choice needs an example with 'options' (a list) that holds its 'answer'")
    named = named_options(notes, options)
    return {
        "names_answer_only": named == [answer],
        "names_wrong_option": any(option != answer for option in named),
        "names_no_option": not named,
        "cites_post": bool(_POST_CITATION.search(notes)),
    }
