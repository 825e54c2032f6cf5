"""The paper's table in one command: compile and evaluate every method on every task from one config.

Methods (rows of REST-PG's Table 1, plus the uncompiled programs) are those of the registry
(:data:`~restpg_dspy.experiments.registry.METHODS`). After the table, each adjacent pair of the paper's order
(:data:`~restpg_dspy.experiments.registry.PAPER_ORDER`), and each ablation pair
(:data:`~restpg_dspy.experiments.registry.ABLATION_PAIRS`: REST-PG against SFT with reasoning, SFT with reasoning
against SFT), is compared example by example
(:func:`restpg_dspy.evals.paired_bootstrap`, resampling users), on all test examples and, for ``implicit_choice``,
separately on seen and held-out evidence wordings, with a second interval that resamples the evidence wordings
themselves: ``paired.md`` and ``paired.json``.

Example:
    >>> from restpg_dspy.experiments import TableConfig, run_table
    >>> run_table(TableConfig(methods=["rag", "rest-pg"], run_dir="runs/table"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.experiments import registry
from restpg_dspy.experiments.config import TableConfig


def load_task(spec: str, config: TableConfig) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Train and test examples of one task spec, sized as ``config`` says."""
    return registry.load_task(
        spec,
        seed=config.seed,
        synthetic_task=config.synthetic_task,
        train_users=config.synthetic_train_users,
        test_users=config.synthetic_test_users,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
    )


def resolve_metrics(names: list[str], judge: Any = None) -> list[Any]:
    """Metric functions by name (see :func:`~restpg_dspy.experiments.registry.resolve_metric`)."""
    return [registry.resolve_metric(name, judge) for name in names]


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


def build_method(name: str, config: TableConfig, student: dspy.LM) -> tuple[dspy.Module, Any]:
    """The program of a method on ``student`` and its optimizer class (``None`` when uncompiled)."""
    program = registry.build_program(
        name,
        retriever=config.retriever,
        k=config.k,
        reasoning_max_tokens=config.reasoning_max_tokens,
        response_max_tokens=config.response_max_tokens,
    )
    program.set_lm(student)
    return program, registry.METHODS[name].optimizer


def compile_method(
    program: dspy.Module,
    optimizer_class: type,
    config: TableConfig,
    *,
    trainset: list[dspy.Example],
    teacher: dspy.LM | None,
    judge: Any,
    run_dir: str | Path,
    adapters_dir: str | Path | None = None,
    **settings: Any,
) -> dspy.Module:
    """Compile ``program`` with ``optimizer_class`` as ``config`` says (``settings`` override ``config.optimizer``).

    ``adapters_dir`` publishes the adapters there instead of in ``run_dir``: methods that share one folder train a
    training they have in common once (SFT with reasoning and REST-PG's SFT stage, say).
    """
    reward = registry.resolve_metric(config.reward, judge)
    train_kwargs = {**({"output_dir": str(adapters_dir)} if adapters_dir else {}), **config.train_kwargs}
    options = {"num_threads": config.num_threads, "train_kwargs": train_kwargs, **config.optimizer, **settings}
    optimizer = optimizer_class(reward, run_dir=str(run_dir), **options)
    return optimizer.compile(program, trainset=trainset, teacher=teacher)


def wording_subsets(testset: list[dspy.Example]) -> dict[str, set[str] | None]:
    """``all`` examples and, where examples say which evidence wording they use, ``seen`` and ``held_out``."""
    from restpg_dspy.evals.evaluate import example_id

    subsets: dict[str, set[str] | None] = {"all": None}
    for wording in ("seen", "held_out"):
        ids = {example_id(e) for e in testset if e.get("wording") == wording}
        if ids:
            subsets[wording] = ids
    return subsets


def comparison_units(testset: list[dspy.Example]) -> dict[str, Any]:
    """What paired comparisons resample: ``users`` and, where examples say which evidence sentence their answer
    hinges on (``fact`` and ``traits["wording"]``), ``wordings``: generalising to a held-out wording is decided
    sentence by sentence, so a difference there is only as sure as the few sentences behind it."""
    from restpg_dspy.evals.evaluate import example_id

    wordings = {
        example_id(e): f"{e.fact}/{e.traits['wording']}"
        for e in testset
        if e.get("fact") and "wording" in (e.get("traits") or {})
    }
    return {"users": "user_id", **({"wordings": wordings} if wordings else {})}


def run_table(config: TableConfig) -> dict[str, dict[str, Any]]:
    """Compile and evaluate every method on every task; write ``results.json``, ``table.md`` and plots.

    Returns:
        ``results[method][task]`` = the evaluation summary (per metric: mean, interval, n, errors).
    """
    from restpg_dspy.evals import evaluate
    from restpg_dspy.evals.metrics import metric_name
    from restpg_dspy.evals.paired import differences_table, paired_differences
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
                    program,
                    optimizer,
                    config,
                    trainset=trainset,
                    teacher=teacher,
                    judge=judge,
                    run_dir=run_dir,
                    adapters_dir=root / slug / "adapters",
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
        differences[slug] = paired_differences(
            rows, registry.compared_pairs(rows), metric_names, wording_subsets(testset), comparison_units(testset)
        )
    (root / "paired.json").write_text(json.dumps(differences, indent=2))
    (root / "paired.md").write_text(
        "".join(f"## {slug}\n\n{differences_table(entries)}\n\n" for slug, entries in differences.items() if entries)
    )
    (root / "table.md").write_text(markdown_table(results, metric_names) + "\n")
    for name in metric_names:
        plot_scores(results, name, root / f"scores_{name}.png")
    return results
