"""Personalized writers: retrieval over the user's profile, a reasoning step, and generation.

Example:
    >>> import dspy, restpg_dspy
    >>> from restpg_dspy.programs import PersonalizedWriter
    >>> from restpg_dspy.retrieval import BM25
    >>> writer = PersonalizedWriter(retriever=BM25(k=2))
    >>> profile = [{"text": "Hey all! Two kids keep me busy. Cheers, Sam", "date": "2024-03-01"}]
    >>> with dspy.context(lm=restpg_dspy.lm("local")):  # doctest: +SKIP
    ...     prediction = writer(request="Review the space heater you bought.", profile=profile)
    >>> prediction.reasoning, prediction.response  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.programs.adapter import CompletionAdapter
from restpg_dspy.programs.profile import ProfileFormatter
from restpg_dspy.programs.signatures import PersonalizedResponse, PersonalReasoning, PlainResponse, ProfileResponse
from restpg_dspy.retrieval import BM25, Retriever
from restpg_dspy.serving import serving_engine
from restpg_dspy.tasks import TASKS, TaskFormat, detect_task

# Tokens kept free in a local model's context for instructions, the request and the reasoning (at most a quarter
# of the context), besides the answer's max_tokens.
_CONTEXT_RESERVE = 512


def check_token_budget(name: str, value: int | None) -> None:
    """Refuse a token budget that is set but is not a positive integer, naming the setting.

    Raises:
        UsageError: ``value`` is not ``None`` and not a positive ``int``.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise UsageError(f"{name} must be a positive number of tokens, not {value!r}")


class PersonalizedProgram(dspy.Module):
    """Shared parts of the writers: retrieval, profile rendering within budget, and the adapter each call uses.

    Args:
        retriever: Picks the profile items shown (default ``BM25(k=5)``); ``None`` shows none.
        formatter: Renders items within a token budget (default ``ProfileFormatter()``).
        task: A task name of :data:`restpg_dspy.tasks.TASKS`, a :class:`TaskFormat`, or ``None`` to detect it
            from the profile.
        adapter: The DSPy adapter for every predictor (default :class:`CompletionAdapter`, which small local
            models need); pass ``dspy.ChatAdapter()`` to keep DSPy's format with API models.
        reasoning_max_tokens: Token budget of the reasoning step (``None``: the LM's ``max_tokens``).
        response_max_tokens: Token budget of the response step (``None``: the LM's ``max_tokens``).

    Raises:
        UsageError: a budget that is not a positive number of tokens.
    """

    def __init__(
        self,
        retriever: Retriever | None = None,
        formatter: ProfileFormatter | None = None,
        task: str | TaskFormat | None = None,
        adapter: dspy.Adapter | None = None,
        reasoning_max_tokens: int | None = None,
        response_max_tokens: int | None = None,
    ):
        super().__init__()
        self.retriever = retriever
        self.formatter = formatter or ProfileFormatter()
        self.task = TASKS[task] if isinstance(task, str) else task
        self.adapter = adapter or CompletionAdapter()
        self.set_budgets(reasoning_max_tokens, response_max_tokens)

    def set_budgets(self, reasoning_max_tokens: int | None = None, response_max_tokens: int | None = None) -> None:
        """Set the token budgets of the reasoning and response steps (``None`` leaves the LM's ``max_tokens``)."""
        check_token_budget("reasoning_max_tokens", reasoning_max_tokens)
        check_token_budget("response_max_tokens", response_max_tokens)
        self.reasoning_max_tokens = reasoning_max_tokens
        self.response_max_tokens = response_max_tokens

    def budget(self, predictor: dspy.Predict) -> int | None:
        """The token budget of ``predictor``'s step: the reasoning budget when it writes ``reasoning``."""
        reasoning = "reasoning" in predictor.signature.output_fields
        return self.reasoning_max_tokens if reasoning else self.response_max_tokens

    def retrieve(self, request: str, profile: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], TaskFormat]:
        task = self.task or detect_task(profile)
        return (self.retriever(request, profile, task) if self.retriever else []), task

    def render_profile(self, items: list[dict[str, Any]], task: TaskFormat) -> str:
        """The prompt section for ``items``, counted in the student model's tokens when it is local."""
        lm = next((p.lm for p in self.predictors() if p.lm is not None), None) or dspy.settings.lm
        engine = serving_engine(lm)
        if engine is not None:
            context = engine.context_length
            budgets = [self.budget(p) or lm.kwargs.get("max_tokens") or 0 for p in self.predictors()]
            room = context - max(budgets, default=0) - min(_CONTEXT_RESERVE, context // 4)
            return self.formatter.render(items, task, engine.tokenizer, budget=max(room, 0))
        return self.formatter.render(items, task)

    def predict(self, predictor: dspy.Predict, **inputs: Any) -> dspy.Prediction:
        """Call ``predictor`` through this program's adapter, within its step's token budget."""
        budget = self.budget(predictor)
        if budget is not None:
            inputs["config"] = {**inputs.get("config", {}), "max_tokens": budget}
        with dspy.context(adapter=self.adapter):
            return predictor(**inputs)

    def describe(self) -> dict[str, Any]:
        """Settings that change this program's outputs besides its prompts and LMs (for cache fingerprints)."""
        return {
            "program": type(self).__name__,
            "retrieval": self.retriever.describe() if self.retriever else None,
            "task": self.task.name if self.task else "auto",
            "item_tokens": self.formatter.item_tokens,
            "profile_tokens": self.formatter.profile_tokens,
            "adapter": type(self.adapter).__name__,
            "reasoning_max_tokens": self.reasoning_max_tokens,
            "response_max_tokens": self.response_max_tokens,
        }


class PersonalizedWriter(PersonalizedProgram):
    """REST-PG's program: retrieve → reason about the user → write from that reasoning.

    Predictors: ``reason`` (request + profile → reasoning) and ``write`` (request + profile + reasoning → response).
    Predictions carry ``reasoning``, ``response`` and the ``retrieved`` items. The reasoning step gets 128 tokens by
    default (short bullet points; a small model's notes otherwise run on to the LM's whole ``max_tokens``).
    """

    def __init__(self, retriever: Retriever | None = None, reasoning_max_tokens: int | None = 128, **kwargs: Any):
        super().__init__(
            retriever=retriever if retriever is not None else BM25(k=5),
            reasoning_max_tokens=reasoning_max_tokens,
            **kwargs,
        )
        self.reason = dspy.Predict(PersonalReasoning)
        self.write = dspy.Predict(PersonalizedResponse)

    def forward(self, request: str, profile: list[dict[str, Any]]) -> dspy.Prediction:
        items, task = self.retrieve(request, profile)
        shown = self.render_profile(items, task)
        reasoning = self.predict(self.reason, request=request, profile=shown).reasoning
        response = self.predict(self.write, request=request, profile=shown, reasoning=reasoning).response
        return dspy.Prediction(reasoning=reasoning, response=response, retrieved=items)


class RAGWriter(PersonalizedProgram):
    """Retrieval-augmented baseline: retrieve → write, with no reasoning step (the ReST-EM program)."""

    def __init__(self, retriever: Retriever | None = None, **kwargs: Any):
        super().__init__(retriever=retriever if retriever is not None else BM25(k=5), **kwargs)
        self.write = dspy.Predict(ProfileResponse)

    def forward(self, request: str, profile: list[dict[str, Any]]) -> dspy.Prediction:
        items, task = self.retrieve(request, profile)
        response = self.predict(self.write, request=request, profile=self.render_profile(items, task)).response
        return dspy.Prediction(response=response, retrieved=items)


class NoPersonalization(PersonalizedProgram):
    """Baseline that ignores the profile: the request alone → response."""

    def __init__(self, **kwargs: Any):
        super().__init__(retriever=None, **kwargs)
        self.write = dspy.Predict(PlainResponse)

    def forward(self, request: str, profile: list[dict[str, Any]] | None = None) -> dspy.Prediction:
        return dspy.Prediction(response=self.predict(self.write, request=request).response, retrieved=[])
