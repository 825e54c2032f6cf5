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
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.experiments import registry
from restpg_dspy.experiments.config import TableConfig
from restpg_dspy.experiments.personal import (
    alone_name,
    personal_costs_table,
    personal_dir,
    personalize,
    with_user_input,
)


def task_slug(spec: str) -> str:
    """The folder a task spec's runs and results live in: ``synthetic``, or the LongLaMP task's name.

    Example:
        >>> task_slug("longlamp:abstract_generation:data/{split}.jsonl")
        'abstract_generation'
    """
    return spec if spec == "synthetic" else spec.split(":")[1]


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


def load_val(spec: str, config: TableConfig) -> list[dspy.Example]:
    """The validation split of one task spec, sized as ``config`` says."""
    return registry.load_split(
        spec,
        "val",
        seed=config.seed,
        synthetic_task=config.synthetic_task,
        users=config.synthetic_val_users,
        limit=config.test_limit,
    )


def resolve_metrics(names: list[str], judge: Any = None) -> list[Any]:
    """Metric functions by name (see :func:`~restpg_dspy.experiments.registry.resolve_metric`)."""
    return [registry.resolve_metric(name, judge) for name in names]


def teacher_lm(spec: str | None, config: TableConfig) -> dspy.LM | None:
    """The teacher a backend string names (``None``: the student), seeded by ``config.seed`` where it draws."""
    import restpg_dspy

    if not spec:
        return None
    seeded = {"seed": config.seed} if spec.split(":")[0] == "oracle" else {}
    return restpg_dspy.lm(spec, max_tokens=config.max_tokens, **seeded)


def config_lms(config: TableConfig) -> tuple[dspy.LM, dspy.LM | None, dspy.LM | None]:
    """The student, teacher and judge LMs of ``config`` (teacher and judge are ``None`` when unset)."""
    import restpg_dspy

    student = restpg_dspy.lm(config.student, max_tokens=config.max_tokens, **config.student_engine)
    judge = restpg_dspy.lm(config.judge) if config.judge else None
    return student, teacher_lm(config.teacher, config), judge


def task_controls(config: TableConfig, slug: str) -> dict[str, Any]:
    """The student's repetition controls on task ``slug``: the config's, else the task's defaults."""
    from restpg_dspy.tasks import TASKS

    if config.repetition_controls is not None:
        return dict(config.repetition_controls)
    task = TASKS.get(slug)
    return dict(task.repetition_controls) if task is not None else {}


def task_student(config: TableConfig, slug: str, student: dspy.LM) -> dspy.LM:
    """``student`` with its repetition controls on task ``slug`` (see :func:`task_controls`)."""
    import restpg_dspy

    controls = task_controls(config, slug)
    return restpg_dspy.with_repetition_controls(student, **controls) if controls else student


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
    method: str,
    program: dspy.Module,
    config: TableConfig,
    *,
    trainset: list[dspy.Example],
    judge: Any,
    run_dir: str | Path,
    adapters_dir: str | Path | None = None,
    on_stage: Callable[[dspy.Module, dict[str, Any]], Any] | None = None,
    **settings: Any,
) -> dspy.Module:
    """Compile ``program`` as ``method`` with the settings ``config`` gives that method (its overrides and the seed;
    ``settings`` override its optimizer settings).

    ``adapters_dir`` publishes the adapters there instead of in ``run_dir``: methods that share one folder train a
    training they have in common once (SFT with reasoning and REST-PG's SFT stage, say). ``on_stage`` is called
    with each stage's program and summary as soon as it is trained.
    """
    own = config.method_settings(method)
    reward = registry.resolve_metric(config.reward, judge)
    train_kwargs = {**({"output_dir": str(adapters_dir)} if adapters_dir else {}), **own["train_kwargs"]}
    options = {"num_threads": config.num_threads, **own["optimizer"], "train_kwargs": train_kwargs, **settings}
    optimizer = registry.METHODS[method].optimizer(reward, run_dir=str(run_dir), **options)
    return optimizer.compile(program, trainset=trainset, teacher=teacher_lm(own["teacher"], config), on_stage=on_stage)


def compile_dir(config: TableConfig, slug: str, method: str) -> Path:
    """Where ``method``'s compile run lives: ``<run_dir>/<task>/<method>``, or with a ``shared_dir``, a folder
    there named by the method and a digest of everything its compile depends on."""
    if not config.shared_dir:
        return Path(config.run_dir) / slug / method
    own = config.method_settings(method)
    if not registry.METHODS[method].reasons:
        own["teacher"] = None  # methods without a reasoning step never ask the teacher
    fields = ("student", "tasks", "synthetic_task", "synthetic_train_users", "seed", "retriever", "k", "max_tokens")
    budgets = ("reasoning_max_tokens", "response_max_tokens", "reward", "train_limit")
    key = {name: getattr(config, name) for name in (*fields, *budgets)}
    controls = task_controls(config, slug)
    if controls:  # (absent when there are none, so runs without them keep their folders)
        key["repetition_controls"] = controls
    digest = hashlib.sha256(json.dumps({"method": method, **key, **own}, sort_keys=True).encode()).hexdigest()
    return Path(config.shared_dir) / slug / f"{method}-{digest[:10]}"


def wording_subsets(testset: list[dspy.Example]) -> dict[str, set[str] | None]:
    """``all`` examples and, where examples say which evidence wording they use, ``seen`` and ``held_out``."""
    from restpg_dspy.evals.evaluate import example_id

    subsets: dict[str, set[str] | None] = {"all": None}
    for wording in ("seen", "held_out"):
        ids = {example_id(e) for e in testset if e.get("wording") == wording}
        if ids:
            subsets[wording] = ids
    return subsets


def subset_results(
    rows: dict[str, list[dict[str, Any]]], metrics: list[str], subsets: dict[str, set[str] | None], slug: str
) -> dict[str, dict[str, Any]]:
    """Each method's summary on each named subset but ``all`` (the table has that), keyed as the table's tasks are:
    ``results[method][f"{slug} {subset}"]``, so :func:`~restpg_dspy.evals.report.markdown_table` renders it."""
    from restpg_dspy.evals.evaluate import EvaluationResult

    named = {subset: ids for subset, ids in subsets.items() if ids is not None}
    if not named:
        return {}
    return {
        method: {
            f"{slug} {subset}": EvaluationResult("", [r for r in method_rows if str(r["id"]) in ids], metrics).summary()
            for subset, ids in named.items()
        }
        for method, method_rows in rows.items()
    }


def write_subset_table(root: Path, results: dict[str, dict[str, Any]], metrics: list[str]) -> Path | None:
    """``subsets.md``: every method's means on seen and held-out wordings, where the tasks have them."""
    from restpg_dspy.evals.report import markdown_table

    if not results:
        return None
    (root / "subsets.md").write_text(markdown_table(results, metrics) + "\n")
    return root / "subsets.md"


def report_subsets(root: Path, results: dict[str, dict[str, Any]], metrics: list[str]) -> Path | None:
    """Write ``subsets.md`` of a finished table run (``results``, its ``results.json``, gives the methods in order
    and ``metrics`` their names) from its ``config.json`` and predictions files; synthetic tasks only: they are
    generated again from the config, where a LongLaMP file may not be on this machine."""
    from restpg_dspy.evals.paired import read_rows

    config = TableConfig.from_file(root / "config.json")
    by_wording: dict[str, dict[str, Any]] = {}
    for task in (t for t in config.tasks if t == "synthetic"):
        _, testset = load_task(task, config)
        files = {method: root / task / f"{method}.predictions.jsonl" for method in results}
        rows = {method: read_rows(path) for method, path in files.items() if path.exists()}
        for method, by_subset in subset_results(rows, metrics, wording_subsets(testset), task).items():
            by_wording.setdefault(method, {}).update(by_subset)
    return write_subset_table(root, by_wording, metrics)


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


def curve_sets(config: TableConfig, task: str, testset: list[dspy.Example]) -> dict[str, list[dspy.Example]]:
    """The example sets every stage is scored on: the validation split and the held-out-wording test examples."""
    sets = {"val": load_val(task, config)}
    held_out = [e for e in testset if e.get("wording") == "held_out"]
    if held_out:
        sets["test held_out"] = held_out
    return sets


def print_scores(slug: str, method: str, summary: dict[str, dict[str, Any]]) -> None:
    """One line of a row's mean scores on a task, as the table goes."""
    scores = "  ".join(f"{name}={stats['mean']:.4f}" for name, stats in summary.items())
    print(f"[{slug}] {method}: {scores}", flush=True)


def run_table(config: TableConfig, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Compile and evaluate every method on every task; write ``results.json``, ``table.md`` and plots.

    Args:
        config: The experiment.
        only: Compile and evaluate only these of ``config.methods`` now; the table still shows every other method
            whose predictions an earlier run of the same settings left in ``run_dir`` (a long experiment is run a
            few methods at a time, and its small result files are all it needs to compare them).

    Returns:
        ``results[method][task]`` = the evaluation summary (per metric: mean, interval, n, errors).
    """
    from restpg_dspy.evals import evaluate
    from restpg_dspy.evals.evaluate import TRUNCATION, EvaluationResult
    from restpg_dspy.evals.metrics import metric_name
    from restpg_dspy.evals.paired import differences_table, paired_differences, read_rows
    from restpg_dspy.evals.report import markdown_table, plot_scores
    from restpg_dspy.experiments.rounds import score_stage, write_round_curves
    from restpg_dspy.programs import RecordedOutputs

    unknown = sorted(set(only or ()) - set(config.methods))
    if unknown:
        raise UsageError(f"only={unknown}: not among the config's methods {config.methods}")
    root = Path(config.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    student, _, judge = config_lms(config)
    metrics = report_metrics(config, judge)
    shared = Path(config.shared_dir) if config.shared_dir else root
    metric_names = [metric_name(m) for m in metrics]
    results: dict[str, dict[str, Any]] = {}
    differences: dict[str, list[dict[str, Any]]] = {}
    by_wording: dict[str, dict[str, Any]] = {}
    for task in config.tasks:
        trainset, testset = load_task(task, config)
        slug = task_slug(task)
        out = root / slug
        out.mkdir(parents=True, exist_ok=True)
        rows: dict[str, list[dict[str, Any]]] = {}
        compiled: dict[str, dspy.Module] = {}
        timings_file = out / "timings.json"
        timings: dict[str, dict[str, float]] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
        runs_file = out / "compile_runs.json"
        runs: dict[str, str] = json.loads(runs_file.read_text()) if runs_file.exists() else {}
        sets = curve_sets(config, task, testset) if config.round_curves else {}

        def score_on_curves(
            program: dspy.Module, entry: dict[str, Any], sets: dict[str, list[dspy.Example]] = sets
        ) -> None:
            # Each stage is scored while its adapter is at hand; the curves written after the compile read the cache.
            if sets:
                score_stage(program, sets, metrics, cache_dir=shared / "cache", num_threads=config.num_threads)

        for method in config.methods:
            predictions = out / f"{method}.predictions.jsonl"
            compiles = registry.METHODS[method].optimizer is not None
            base = registry.METHODS[method].personal_of
            run_dir = None
            if compiles:
                run_dir = (
                    personal_dir(compile_dir(config, slug, base), config) if base else compile_dir(config, slug, method)
                )
            if only is not None and method not in only:
                # Shown from an earlier run's predictions, if that run had this method's settings.
                current = not compiles or runs.get(method) == str(run_dir)
                shown = [method, alone_name(config, method)] if base else [method]
                for name in shown if predictions.exists() and current else []:
                    if (out / f"{name}.predictions.jsonl").exists():
                        result = EvaluationResult("", read_rows(out / f"{name}.predictions.jsonl"), metric_names)
                        rows[name] = result.rows
                        results.setdefault(name, {})[slug] = result.summary()
                continue
            if method == "reference":
                program = RecordedOutputs.from_examples(testset, "reference_prediction")
            else:
                program, _ = build_method(base or method, config, task_student(config, slug, student))
            started = time.perf_counter()
            examples = testset
            if compiles:
                program = compile_method(
                    base or method,
                    program,
                    config,
                    trainset=trainset,
                    judge=judge,
                    run_dir=compile_dir(config, slug, base or method),
                    adapters_dir=shared / slug / "adapters",
                    on_stage=None if base else score_on_curves,
                )
                (out / f"{method}.history.json").write_text(json.dumps(program.restpg_history, indent=2))
                if base:  # a personal adapter per test user, from their profiles only
                    program, alone = personalize(program, config, testset, run_dir)
                    examples = with_user_input(testset)
                    (out / f"{method}.users.jsonl").write_text(
                        "".join(json.dumps(row) + "\n" for row in program.personal_adapters_log)
                    )
                    if alone is not None:
                        name = alone_name(config, method)
                        alone_result = evaluate(
                            alone, testset, metrics, cache_dir=shared / "cache", num_threads=config.num_threads
                        )
                        alone_result.to_jsonl(out / f"{name}.predictions.jsonl")
                        rows[name] = alone_result.rows
                        results.setdefault(name, {})[slug] = alone_summary = alone_result.summary()
                        print_scores(slug, name, alone_summary)
                else:
                    compiled[method] = program
                runs[method] = str(run_dir)
                runs_file.write_text(json.dumps(runs, indent=2))
            compiled_at = time.perf_counter()
            result = evaluate(program, examples, metrics, cache_dir=shared / "cache", num_threads=config.num_threads)
            # Added up over the invocations that resumed this table (a cached stage adds almost nothing).
            spent = timings.setdefault(method, {})
            for part, seconds in (
                ("compile_s", compiled_at - started),
                ("evaluate_s", time.perf_counter() - compiled_at),
            ):
                spent[part] = round(spent.get(part, 0.0) + seconds, 2)
            timings_file.write_text(json.dumps(timings, indent=2))
            result.to_jsonl(predictions)
            if base:
                served = sum(bool(row.get("personal")) for row in result.rows)
                print(f"[{slug}] {method}: {served} of {len(result.rows)} predictions served by a personal adapter")
            summary = result.summary()
            rows[method] = result.rows
            results.setdefault(method, {})[slug] = summary
            print_scores(slug, method, summary)
            (root / "results.json").write_text(json.dumps(results, indent=2))
        if config.round_curves and compiled:
            started = time.perf_counter()
            write_round_curves(sets, compiled, metrics, shared / "cache", out, config.methods, config.num_threads)
            spent = timings.setdefault("round_curves", {})
            spent["evaluate_s"] = round(spent.get("evaluate_s", 0.0) + time.perf_counter() - started, 2)
            spent["methods"] = sorted(compiled)
            timings_file.write_text(json.dumps(timings, indent=2))
        alone = [(m, alone_name(config, m)) for m in rows if m in registry.METHODS and registry.METHODS[m].personal_of]
        pairs = [*registry.compared_pairs(rows), *((a, b) for a, b in alone if b in rows)]
        subsets = wording_subsets(testset)
        differences[slug] = paired_differences(rows, pairs, metric_names, subsets, comparison_units(testset))
        for method, by_subset in subset_results(rows, metric_names, subsets, slug).items():
            by_wording.setdefault(method, {}).update(by_subset)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "paired.json").write_text(json.dumps(differences, indent=2))
    (root / "paired.md").write_text(
        "".join(f"## {slug}\n\n{differences_table(entries)}\n\n" for slug, entries in differences.items() if entries)
    )
    # Beside the metrics, the share of predictions cut off by their token budget (where the predictions say).
    truncation = [TRUNCATION] if any(TRUNCATION in s for by_task in results.values() for s in by_task.values()) else []
    (root / "table.md").write_text(markdown_table(results, [*metric_names, *truncation]) + "\n")
    write_subset_table(root, by_wording, metric_names)
    costs = personal_costs_table(root, config)
    if costs:
        (root / "personal.md").write_text(costs + "\n")
    for name in metric_names:
        plot_scores(results, name, root / f"scores_{name}.png")
    return results
