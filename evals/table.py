"""The paper's table in one command: compile and evaluate every method on every task from one config file.

Methods (rows of REST-PG's Table 1, plus the uncompiled programs):

==========================  ======================  ===================
name                        program                 optimizer
==========================  ======================  ===================
``no-personalization``      NoPersonalization       –
``rag``                     RAGWriter               –
``personalized``            PersonalizedWriter      –
``sft``                     RAGWriter               SFT
``sft-reasoning``           PersonalizedWriter      SFTWithReasoning
``rest-em``                 RAGWriter               ReSTEM
``rest-pg``                 PersonalizedWriter      RESTPG
==========================  ======================  ===================

Tasks: ``synthetic`` (the offline task named by ``synthetic_task``), ``longlamp:<task>`` (the hub) or
``longlamp:<task>:<path>`` (local files; ``{split}`` in the path is replaced by ``train``/``test``).

After the table, each adjacent pair of the paper's order (:data:`PAPER_ORDER`) is compared example by example
(:func:`restpg_dspy.evals.paired_bootstrap`, resampling users), on all test examples and, for ``implicit_choice``,
separately on seen and held-out evidence wordings: ``paired.md`` and ``paired.json``.

Example:
    >>> from restpg_dspy.evals.table import TableConfig
    >>> TableConfig(methods=["rag", "rest-pg"]).methods
    ['rag', 'rest-pg']
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.errors import UsageError

logger = logging.getLogger(__name__)

METHODS = ("no-personalization", "rag", "personalized", "sft", "sft-reasoning", "rest-em", "rest-pg")
# The paper's ordering, best first: each adjacent pair is compared with a paired interval.
PAPER_ORDER = ("rest-pg", "rest-em", "sft", "rag", "no-personalization")


@dataclass
class TableConfig:
    """Everything one table run needs; the same keys are read from YAML or TOML files.

    Attributes:
        run_dir: Where compile runs, the evaluation cache and the outputs go.
        student: Backend string of the trained model (``local``, ``local:<path>``).
        teacher: Backend string of the hindsight-reasoning teacher (default: the student).
        judge: Backend string of an LLM judge; adds the ``llm_judge`` metric.
        tasks: ``synthetic``, ``longlamp:<task>`` or ``longlamp:<task>:<path with {split}>``.
        synthetic_task: The task ``synthetic`` generates: ``implicit_choice`` or ``life_facts``.
        methods: Rows of the table, from :data:`METHODS`.
        metrics: ``rouge_1``, ``rouge_l``, ``meteor``, ``option_accuracy`` (and ``llm_judge`` when a judge is set).
        reward: The metric that scores E-step samples; ``a+b`` is the mean of two metrics, ``0.7*a+0.3*b`` a
            weighted mean.
        train_limit: Most training examples per task (LongLaMP).
        test_limit: Most test examples per task (LongLaMP).
        synthetic_train_users: Users in the synthetic training split.
        synthetic_test_users: Users in the synthetic test split.
        seed: Data sampling seed.
        retriever: ``bm25``, ``dense`` or ``recency``.
        k: Profile items retrieved.
        max_tokens: Token budget of each generation (the LMs' default).
        reasoning_max_tokens: Token budget of the reasoning step (default: ``max_tokens``).
        response_max_tokens: Token budget of the response step (default: ``max_tokens``).
        num_threads: Concurrent program runs.
        optimizer: Keyword arguments of the optimizers (``rounds``, ``samples_per_input``, ``threshold``, ...).
        train_kwargs: Fine-tuning settings (see ``restpg_dspy.finetune.LoRATrainingConfig``).
    """

    run_dir: str = "runs/table"
    student: str = "local"
    teacher: str | None = None
    judge: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["synthetic"])
    synthetic_task: str = "implicit_choice"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    metrics: list[str] = field(default_factory=lambda: ["rouge_1", "rouge_l", "meteor"])
    reward: str = "rouge_l"
    train_limit: int | None = None
    test_limit: int | None = None
    synthetic_train_users: int = 12
    synthetic_test_users: int = 16
    seed: int = 0
    retriever: str = "bm25"
    k: int = 2
    max_tokens: int = 128
    reasoning_max_tokens: int | None = None
    response_max_tokens: int | None = None
    num_threads: int = 16
    optimizer: dict[str, Any] = field(default_factory=dict)
    train_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if self.retriever not in ("bm25", "dense", "recency"):
            raise UsageError(f"unknown retriever {self.retriever!r}; choose bm25, dense or recency")
        from restpg_dspy.data import TASKS

        if self.synthetic_task not in TASKS:
            raise UsageError(f"unknown synthetic_task {self.synthetic_task!r}; choose one of {sorted(TASKS)}")
        from restpg_dspy.programs.writers import check_token_budget

        for name in ("max_tokens", "reasoning_max_tokens", "response_max_tokens"):
            check_token_budget(name, getattr(self, name))

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TableConfig:
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; ``overrides`` that are not ``None`` win.

        Raises:
            ValueError: the file is missing, unreadable, or has keys this config does not know (named).
        """
        path = Path(path)
        if not path.exists():
            raise UsageError(f"config file {path} does not exist")
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a mapping of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def load_task(spec: str, config: TableConfig) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Train and test examples of one task spec."""
    from restpg_dspy.data import load_longlamp, synthetic

    if spec == "synthetic":
        task = config.synthetic_task
        return (
            synthetic("train", seed=config.seed, task=task, users=config.synthetic_train_users),
            synthetic("test", seed=config.seed, task=task, users=config.synthetic_test_users),
        )
    kind, _, rest = spec.partition(":")
    if kind != "longlamp" or not rest:
        raise UsageError(f"unknown task {spec!r}; use 'synthetic', 'longlamp:<task>' or 'longlamp:<task>:<path>'")
    task, _, path = rest.partition(":")
    if not path:
        return (
            load_longlamp(task, "train", limit=config.train_limit, seed=config.seed),
            load_longlamp(task, "test", limit=config.test_limit, seed=config.seed),
        )
    if "{split}" not in path:
        raise UsageError(f"task {spec!r}: the local path needs a {{split}} placeholder for its train and test files")
    return (
        load_longlamp(task, "train", path=path.format(split="train"), limit=config.train_limit, seed=config.seed),
        load_longlamp(task, "test", path=path.format(split="test"), limit=config.test_limit, seed=config.seed),
    )


def resolve_metrics(names: list[str], judge: Any = None) -> list[Any]:
    """Metric functions by name; ``meteor`` without WordNet becomes ``meteor_without_synonyms`` (and says so).

    ``a+b`` names the mean of metrics ``a`` and ``b``; ``0.7*a+0.3*b`` a weighted mean.
    """
    from restpg_dspy.evals import (
        LLMJudge,
        WeightedMean,
        meteor,
        meteor_without_synonyms,
        option_accuracy,
        rouge_1,
        rouge_l,
    )
    from restpg_dspy.evals.wordnet import load as load_wordnet

    available = {"rouge_1": rouge_1, "rouge_l": rouge_l, "meteor": meteor, "option_accuracy": option_accuracy}
    metrics = []
    for name in names:
        if "+" in name:
            weights = {}
            for part in name.split("+"):
                weight, _, metric = part.strip().rpartition("*")
                try:
                    weights[resolve_metrics([metric.strip()], judge)[0]] = float(weight) if weight else 1.0
                except ValueError as err:
                    raise UsageError(f"metric {name!r}: {err}") from None
            metrics.append(WeightedMean(weights))
        elif name == "meteor" and load_wordnet() is None:
            logger.warning("WordNet is not installed: reporting meteor_without_synonyms instead of METEOR")
            metrics.append(meteor_without_synonyms)
        elif name == "llm_judge":
            if judge is None:
                raise UsageError("the llm_judge metric needs a judge model (judge: <backend string>)")
            metrics.append(LLMJudge(judge))
        elif name in available:
            metrics.append(available[name])
        else:
            raise UsageError(f"unknown metric {name!r}; choose from {[*available, 'llm_judge']}")
    return metrics


def config_lms(config: TableConfig) -> tuple[dspy.LM, dspy.LM | None, dspy.LM | None]:
    """The student, teacher and judge LMs of ``config`` (teacher and judge are ``None`` when unset)."""
    import restpg_dspy

    student = restpg_dspy.lm(config.student, max_tokens=config.max_tokens)
    teacher = restpg_dspy.lm(config.teacher, max_tokens=config.max_tokens) if config.teacher else None
    judge = restpg_dspy.lm(config.judge) if config.judge else None
    return student, teacher, judge


def report_metrics(config: TableConfig, judge: Any = None) -> list[Any]:
    """The metrics ``config`` names, plus ``llm_judge`` whenever a judge is set."""
    extra = ["llm_judge"] if judge is not None and "llm_judge" not in config.metrics else []
    return resolve_metrics([*config.metrics, *extra], judge)


def compile_method(
    program: dspy.Module,
    optimizer_class: type,
    config: TableConfig,
    *,
    trainset: list[dspy.Example],
    teacher: dspy.LM | None,
    judge: Any,
    run_dir: str | Path,
    **settings: Any,
) -> dspy.Module:
    """Compile ``program`` with ``optimizer_class`` as ``config`` says (``settings`` override ``config.optimizer``)."""
    reward = resolve_metrics([config.reward], judge)[0]
    options = {"num_threads": config.num_threads, "train_kwargs": config.train_kwargs, **config.optimizer, **settings}
    optimizer = optimizer_class(reward, run_dir=str(run_dir), **options)
    return optimizer.compile(program, trainset=trainset, teacher=teacher)


def build_method(name: str, config: TableConfig, student: dspy.LM) -> tuple[dspy.Module, Any]:
    """The program of a method on ``student`` and its optimizer class (``None`` when uncompiled)."""
    from restpg_dspy.optimizers import RESTPG, SFT, ReSTEM, SFTWithReasoning
    from restpg_dspy.programs import NoPersonalization, PersonalizedWriter, RAGWriter
    from restpg_dspy.retrieval import BM25, Dense, Recency

    retriever = {"bm25": BM25, "dense": Dense, "recency": Recency}[config.retriever](k=config.k)
    response = {"response_max_tokens": config.response_max_tokens}
    both = {**response, "reasoning_max_tokens": config.reasoning_max_tokens}
    programs = {
        "no-personalization": (lambda: NoPersonalization(**response), None),
        "rag": (lambda: RAGWriter(retriever=retriever, **response), None),
        "personalized": (lambda: PersonalizedWriter(retriever=retriever, **both), None),
        "sft": (lambda: RAGWriter(retriever=retriever, **response), SFT),
        "sft-reasoning": (lambda: PersonalizedWriter(retriever=retriever, **both), SFTWithReasoning),
        "rest-em": (lambda: RAGWriter(retriever=retriever, **response), ReSTEM),
        "rest-pg": (lambda: PersonalizedWriter(retriever=retriever, **both), RESTPG),
    }
    make, optimizer = programs[name]
    program = make()
    program.set_lm(student)
    return program, optimizer


def wording_subsets(testset: list[dspy.Example]) -> dict[str, set[str] | None]:
    """``all`` examples and, where examples say which evidence wording they use, ``seen`` and ``held_out``."""
    from restpg_dspy.evals.evaluate import example_id

    subsets: dict[str, set[str] | None] = {"all": None}
    for wording in ("seen", "held_out"):
        ids = {example_id(e) for e in testset if e.get("wording") == wording}
        if ids:
            subsets[wording] = ids
    return subsets


def run_table(config: TableConfig) -> dict[str, dict[str, Any]]:
    """Compile and evaluate every method on every task; write ``results.json``, ``table.md`` and plots.

    Returns:
        ``results[method][task]`` = the evaluation summary (per metric: mean, interval, n, errors).
    """
    from restpg_dspy.evals import evaluate
    from restpg_dspy.evals.metrics import metric_name
    from restpg_dspy.evals.paired import adjacent_differences, differences_table
    from restpg_dspy.evals.report import markdown_table, plot_scores

    root = Path(config.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    student, teacher, judge = config_lms(config)
    metrics = report_metrics(config, judge)
    metric_names = [metric_name(m) for m in metrics]
    results: dict[str, dict[str, Any]] = {}
    differences: dict[str, list[dict[str, Any]]] = {}
    for task in config.tasks:
        trainset, testset = load_task(task, config)
        slug = task.split(":")[0] if task == "synthetic" else task.split(":")[1]
        rows: dict[str, list[dict[str, Any]]] = {}
        for method in config.methods:
            program, optimizer = build_method(method, config, student)
            if optimizer is not None:
                run_dir = root / slug / method
                program = compile_method(
                    program, optimizer, config, trainset=trainset, teacher=teacher, judge=judge, run_dir=run_dir
                )
            result = evaluate(program, testset, metrics, cache_dir=root / "cache", num_threads=config.num_threads)
            (root / slug).mkdir(parents=True, exist_ok=True)
            result.to_jsonl(root / slug / f"{method}.predictions.jsonl")
            summary = result.summary()
            rows[method] = result.rows
            results.setdefault(method, {})[slug] = summary
            scores = "  ".join(f"{name}={stats['mean']:.4f}" for name, stats in summary.items())
            print(f"[{slug}] {method}: {scores}", flush=True)
            (root / "results.json").write_text(json.dumps(results, indent=2))
        differences[slug] = adjacent_differences(rows, list(PAPER_ORDER), metric_names, wording_subsets(testset))
    (root / "paired.json").write_text(json.dumps(differences, indent=2))
    (root / "paired.md").write_text(
        "".join(f"## {slug}\n\n{differences_table(entries)}\n\n" for slug, entries in differences.items() if entries)
    )
    (root / "table.md").write_text(markdown_table(results, metric_names) + "\n")
    for name in metric_names:
        plot_scores(results, name, root / f"scores_{name}.png")
    return results
