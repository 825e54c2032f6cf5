"""The one registry of what an experiment can name: methods, metrics, retrievers and tasks.

The table runner, the demo and the command line all look names up here, so a new method, metric, retriever or task
is added in one place.

Example:
    >>> from restpg_dspy.experiments.registry import METHODS, METRICS, RETRIEVERS
    >>> METHODS["rest-pg"].optimizer.__name__, METHODS["rest-pg"].program.__name__
    ('RESTPG', 'PersonalizedWriter')
    >>> sorted(RETRIEVERS)
    ['bm25', 'dense', 'recency']
    >>> "option_accuracy" in METRICS
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.evals import loop_rate, meteor, meteor_without_synonyms, option_accuracy, rouge_1, rouge_l
from restpg_dspy.optimizers import RESTPG, SFT, ReSTEM, SFTWithReasoning
from restpg_dspy.programs import NoPersonalization, PersonalizedWriter, RAGWriter, RecordedOutputs
from restpg_dspy.retrieval import BM25, Dense, Recency

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """A row of the paper's table: a program, the optimizer that compiles it (``None``: used as it is), a label."""

    program: type
    optimizer: type | None
    label: str
    personal_of: str | None = None  # the compiled method whose program this row gives a personal adapter per user

    @property
    def reasons(self) -> bool:
        """Whether the program has a reasoning step (it takes a reasoning budget)."""
        return self.program is PersonalizedWriter


METHODS: dict[str, Method] = {
    "no-personalization": Method(NoPersonalization, None, "no personalization"),
    "rag": Method(RAGWriter, None, "RAG"),
    "personalized": Method(PersonalizedWriter, None, "uncompiled PersonalizedWriter"),
    "sft": Method(RAGWriter, SFT, "SFT (RAGWriter)"),
    "sft-reasoning": Method(PersonalizedWriter, SFTWithReasoning, "SFT with reasoning"),
    "rest-em": Method(RAGWriter, ReSTEM, "ReST-EM"),
    "rest-pg": Method(PersonalizedWriter, RESTPG, "REST-PG"),
    # The dataset's own predictions of another system (LongLaMP: a Llama-3-8B RAG baseline), scored on the same records.
    "reference": Method(RecordedOutputs, None, "reference predictions (the dataset's)"),
    # Beyond the paper: the compiled program, with a personal adapter per test user trained on that user's profile.
    "sft+personal": Method(RAGWriter, SFT, "SFT + personal adapters", "sft"),
    "sft-reasoning+personal": Method(
        PersonalizedWriter, SFTWithReasoning, "SFT with reasoning + personal adapters", "sft-reasoning"
    ),
    "rest-pg+personal": Method(PersonalizedWriter, RESTPG, "REST-PG + personal adapters", "rest-pg"),
}
COMPILED = tuple(name for name, m in METHODS.items() if m.optimizer is not None and m.personal_of is None)
# A table's methods unless its config names them: every method of the paper's table that runs on any task (the
# reference needs records that carry another system's predictions).
DEFAULT_METHODS = tuple(
    name for name, m in METHODS.items() if m.program is not RecordedOutputs and m.personal_of is None
)
UNCOMPILED = tuple(name for name, method in METHODS.items() if method.optimizer is None)
# The paper's ordering, best first: each adjacent pair is compared with a paired interval.
PAPER_ORDER = ("rest-pg", "rest-em", "sft", "rag", "no-personalization")
# Pairs that isolate one part of REST-PG, compared too: what self-training adds to SFT on the teacher's reasoning, and
# what that reasoning adds to plain SFT.
ABLATION_PAIRS = (
    ("rest-pg", "sft-reasoning"),
    ("sft-reasoning", "sft"),
    *((name, m.personal_of) for name, m in METHODS.items() if m.personal_of),
)
METRICS = {
    "rouge_1": rouge_1,
    "rouge_l": rouge_l,
    "meteor": meteor,
    "option_accuracy": option_accuracy,
    "loop_rate": loop_rate,
}
METRIC_NAMES = (*METRICS, "llm_judge")
RETRIEVERS = {"bm25": BM25, "dense": Dense, "recency": Recency}
TASK_SPECS = "'synthetic', 'longlamp:<task>', 'longlamp:<task>:<path with {split}>' or 'longlamp:<task>:<one file>'"


def compared_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The ``(better, worse)`` pairs a table of ``methods`` compares: each adjacent pair of the paper's order among
    them, then each ablation pair whose two methods are both there.

    Example:
        >>> compared_pairs(["sft", "sft-reasoning", "rest-pg", "rag"])
        [('rest-pg', 'sft'), ('sft', 'rag'), ('rest-pg', 'sft-reasoning'), ('sft-reasoning', 'sft')]
    """
    methods = set(methods)
    adjacent = pairwise(m for m in PAPER_ORDER if m in methods)
    return [*adjacent, *(pair for pair in ABLATION_PAIRS if set(pair) <= methods)]


def check_name(kind: str, name: str, known: Any) -> None:
    """Refuse a name the registry does not hold, listing the ones it does."""
    if name not in known:
        raise UsageError(f"unknown {kind} {name!r}; choose from {list(known)}")


def build_program(
    name: str, *, retriever: str, k: int, reasoning_max_tokens: int | None, response_max_tokens: int | None
) -> dspy.Module:
    """The program of method ``name`` with its retriever and token budgets."""
    check_name("method", name, METHODS)
    method = METHODS[name]
    if method.program is RecordedOutputs:
        raise UsageError(f"method {name!r} answers with the test examples' recorded outputs: build it from them")
    if method.program is NoPersonalization:
        return NoPersonalization(response_max_tokens=response_max_tokens)
    check_name("retriever", retriever, RETRIEVERS)
    settings = {"retriever": RETRIEVERS[retriever](k=k), "response_max_tokens": response_max_tokens}
    if method.reasons:
        settings["reasoning_max_tokens"] = reasoning_max_tokens
    return method.program(**settings)


def resolve_metric(name: str, judge: Any = None) -> Any:
    """The metric a name stands for; ``a+b`` is the mean of two metrics, ``0.7*a+0.3*b`` a weighted mean.

    ``meteor`` without WordNet becomes ``meteor_without_synonyms`` (and says so); ``llm_judge`` needs a judge LM.
    """
    from restpg_dspy.evals import LLMJudge, WeightedMean
    from restpg_dspy.evals.wordnet import load as load_wordnet

    if "+" in name:
        weights = {}
        for part in name.split("+"):
            weight, _, metric = part.strip().rpartition("*")
            try:
                weights[resolve_metric(metric.strip(), judge)] = float(weight) if weight else 1.0
            except ValueError as err:
                raise UsageError(f"metric {name!r}: {err}") from None
        return WeightedMean(weights)
    if name == "meteor" and load_wordnet() is None:
        logger.warning("WordNet is not installed: reporting meteor_without_synonyms instead of METEOR")
        return meteor_without_synonyms
    if name == "llm_judge":
        if judge is None:
            raise UsageError("the llm_judge metric needs a judge model (judge: <backend string>)")
        return LLMJudge(judge)
    check_name("metric", name, METRIC_NAMES)
    return METRICS[name]


def load_task(
    spec: str,
    *,
    seed: int,
    synthetic_task: str,
    train_users: int,
    test_users: int,
    train_limit: int | None,
    test_limit: int | None,
) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Train and test examples of one task spec (see :data:`TASK_SPECS`)."""
    train = load_split(spec, "train", seed=seed, synthetic_task=synthetic_task, users=train_users, limit=train_limit)
    test = load_split(spec, "test", seed=seed, synthetic_task=synthetic_task, users=test_users, limit=test_limit)
    return train, test


def load_split(
    spec: str, split: str, *, seed: int, synthetic_task: str, users: int | None, limit: int | None
) -> list[dspy.Example]:
    """One split (``train``, ``val`` or ``test``) of a task spec: ``users`` sizes a synthetic split, ``limit`` a
    LongLaMP one."""
    from restpg_dspy.data import load_longlamp, synthetic

    if spec == "synthetic":
        return synthetic(split, seed=seed, task=synthetic_task, users=users)
    kind, _, rest = spec.partition(":")
    if kind != "longlamp" or not rest:
        raise UsageError(f"unknown task {spec!r}; use {TASK_SPECS}")
    task, _, path = rest.partition(":")
    # A path with {split} names one file per split; a path without it, one file split by the hash of record ids.
    files = {"path": path.format(split=split), "split_by_hash": "{split}" not in path} if path else {}
    return load_longlamp(task, split, limit=limit, seed=seed, **files)
