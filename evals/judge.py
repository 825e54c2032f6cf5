"""An LLM judge that scores a response against what the user really wrote on a 1–10 rubric (REST-PG's metric).

When the judge LM reports token log-probabilities, the score is the rubric value with the highest probability
(``"10"`` is read as ``"1"`` followed by ``"0"``, which can be split only where the judge wrote ``"1"``: the
distribution of the next token is then the one after ``"1"``); otherwise the first number in its answer is taken, and
answers without one are counted and raised as :class:`JudgeParseError`.
Usable as a metric and as the optimizer's reward.

Example:
    >>> import restpg_dspy
    >>> from restpg_dspy.evals import LLMJudge
    >>> judge = LLMJudge(restpg_dspy.lm("openai/gpt-4o-mini"))  # doctest: +SKIP
    >>> judge(example, prediction)  # doctest: +SKIP
    0.7
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import Counter
from typing import Any

import dspy
from dspy.lm15 import Config, Message, Request

from restpg_dspy.evals.metrics import reference_and_response
from restpg_dspy.serving.backends import lm_identity

RUBRIC = (
    "You grade personalized writing. For one request, compare a generated text with the text the user actually "
    "wrote. Score from 1 to 10: 1 = unrelated; 3 = same topic, different content and style; 5 = partly the same "
    "content or style; 7 = mostly the same content and style, with differences; 10 = the same content, details and "
    "style. Answer with the number only."
)
_NUMBER = re.compile(r"\b(10|[1-9])\b")


class JudgeParseError(ValueError):
    """The judge's answer held no score from 1 to 10."""


class LLMJudge:
    """Score ``prediction.response`` against ``example.output`` with an LM, as a DSPy metric in [0.1, 1.0].

    Args:
        lm: Any ``dspy.LM`` (a local model or an API model).
        use_logprobs: Read the most probable score from log-probabilities when the LM reports them.
        top_logprobs: Alternatives requested per token.
        rubric: The grading instructions (the system prompt).
        name: The name its values are reported under (give two judges in one evaluation different names).

    Attributes:
        stats: Counters: ``scored_by_logprobs``, ``scored_by_text``, ``unparseable``.
    """

    def __init__(
        self,
        lm: dspy.LM,
        *,
        use_logprobs: bool = True,
        top_logprobs: int = 20,
        rubric: str = RUBRIC,
        name: str = "llm_judge",
    ):
        self.lm = lm
        self.use_logprobs = use_logprobs
        self.top_logprobs = top_logprobs
        self.rubric = rubric
        self.__name__ = name
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        """The judge LM (model id and settings), the rubric's hash and the scoring mode: what decides a score."""
        return {
            "metric": "llm_judge",
            "lm": lm_identity(self.lm),
            "rubric": hashlib.sha256(self.rubric.encode()).hexdigest()[:16],
            "scoring": f"logprobs(top {self.top_logprobs})" if self.use_logprobs else "text",
        }

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        reference, response = reference_and_response(example, prediction)
        return self.score(example.get("request", ""), reference, response) / 10

    def score(self, request: str, reference: str, response: str) -> int:
        """The rubric score (1–10) of ``response`` for ``request`` against the user's ``reference``."""
        prompt = (
            f"Request:\n{request}\n\nText the user wrote:\n{reference}\n\nGenerated text:\n{response}\n\nScore (1-10):"
        )
        config = Config(max_tokens=4, temperature=0.0, logprobs=self.top_logprobs if self.use_logprobs else None)
        answer = self.lm(
            Request(model=self.lm.model, system=self.rubric, messages=(Message.user(prompt),), config=config)
        )
        if answer.logprobs:
            value = _most_probable_score(answer.logprobs)
            if value is not None:
                self._count("scored_by_logprobs")
                return value
        text = "".join(getattr(part, "text", "") for part in answer.message.parts)
        match = _NUMBER.search(text)
        if match is None:
            self._count("unparseable")
            raise JudgeParseError(f"the judge answered {text!r}, which holds no score from 1 to 10")
        self._count("scored_by_text")
        return int(match.group(1))

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


def _most_probable_score(tokens: tuple) -> int | None:
    """The most probable score at the first generated token that is a number, from its alternatives."""
    for position, token in enumerate(tokens):
        if not token.token.strip().isdigit():
            continue
        candidates: dict[int, float] = {}
        for alternative in (*token.top, token):
            text = alternative.token.strip()
            if text.isdigit() and 1 <= int(text) <= 10:
                candidates[int(text)] = max(candidates.get(int(text), -math.inf), alternative.logprob)
        single_token_ten = 10 in candidates
        if token.token.strip() == "1" and position + 1 < len(tokens):
            # "10" is "1" then "0": split the mass of "1" by how likely "0" follows it. Only where "1" was written
            # is the next token's distribution the one after "1".
            following = tokens[position + 1]
            zero = max((a.logprob for a in (*following.top, following) if a.token.strip() == "0"), default=-math.inf)
            p_one = math.exp(candidates[1])
            p_zero = math.exp(zero)
            if p_zero > 0:
                candidates[10] = max(candidates.get(10, -math.inf), math.log(p_one * p_zero))
                candidates[1] = math.log(max(p_one * (1 - p_zero), 1e-300))
        elif not candidates:
            return None
        best = max(candidates, key=candidates.get)
        if best == 1 and token.token.strip() != "1" and not single_token_ten:
            return None  # "1" stands for "1" and "10" together and cannot be split: the written answer decides
        return best
    return None
