"""The ``restpg`` command: demo, compile, calibrate, evaluate, table, compare, notes and report.

Backends are strings everywhere: ``local`` (the embedded SmolLM2-135M-Instruct), ``local:<folder or hf id>``, or
any LiteLLM model such as ``openai/gpt-4o-mini``. Data: ``synthetic`` or ``longlamp:<task>[:<file with {split}>]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.files import write_atomic


class TruncationCounter(logging.Filter):
    """Counts DSPy's per-call "LM response was truncated" warnings instead of printing each one.

    A run makes hundreds of calls; the optimizer's stage summaries already report the truncation rate, and the
    command prints the count once at the end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("LM response was truncated"):
            self.count += 1
            return False
        return True


def _option(parser: argparse.ArgumentParser, field: str, **settings: Any) -> None:
    """An option for a :class:`~restpg_dspy.experiments.TableConfig` field, its help taken from the field's."""
    from restpg_dspy.experiments import TableConfig

    parser.add_argument(f"--{field.replace('_', '-')}", dest=field, help=TableConfig.help(field), **settings)


def _add_common(parser: argparse.ArgumentParser) -> None:
    from restpg_dspy.experiments.registry import TASK_SPECS

    parser.add_argument("--config", help="YAML or TOML file with the same keys as the options (options win)")
    for field in ("student", "teacher", "judge", "run_dir", "synthetic_task"):
        _option(parser, field)
    _option(parser, "seed", type=int)
    _option(parser, "reasoning_max_tokens", type=int)
    _option(parser, "response_max_tokens", type=int)
    parser.add_argument("--data", help=f"the task: {TASK_SPECS}")
    parser.add_argument("--limit", type=int, help="most train and test examples (LongLaMP)")


def build_parser() -> argparse.ArgumentParser:
    from restpg_dspy.experiments.registry import COMPILED, METHODS, METRIC_NAMES, UNCOMPILED
    from restpg_dspy.optimizers.config import RESTPGConfig

    parser = argparse.ArgumentParser(
        prog="restpg",
        description="Personalized DSPy programs trained with REST-PG (reasoning-enhanced self-training).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors too")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="REST-PG vs SFT vs the uncompiled program on the offline benchmark (embedded model)"
    )
    demo.add_argument("--run-dir", default="runs/demo", help="output folder (re-running reuses it)")

    table = commands.add_parser("table", help="compile and evaluate several methods on several tasks (the paper table)")
    _add_common(table)
    table.add_argument("--methods", help=f"comma-separated: {','.join(METHODS)}")
    table.add_argument("--metrics", help=f"comma-separated: {','.join(METRIC_NAMES)}")
    table.add_argument(
        "--only",
        help="comma-separated methods to compile and evaluate now; the table also shows the config's other methods "
        "whose predictions an earlier run with the same settings left in the run directory",
    )

    compile_ = commands.add_parser("compile", help="compile one method and save the program")
    _add_common(compile_)
    compile_.add_argument("--method", default="rest-pg", choices=COMPILED, help="the method (default rest-pg)")
    compile_.add_argument("--rounds", type=int, help=RESTPGConfig.help("rounds"))
    compile_.add_argument("--samples", type=int, help=RESTPGConfig.help("samples_per_input"))

    calibrate = commands.add_parser(
        "calibrate",
        help="choose a method's training epochs from training and validation statistics only, by a fixed rule",
    )
    _add_common(calibrate)
    calibrate.add_argument("--method", required=True, choices=COMPILED, help="the method whose budget is chosen")
    calibrate.add_argument(
        "--rule",
        required=True,
        choices=["best_on_val", "best_of_grid", "room"],
        help="best_on_val: the baseline's best validation score, stopping at the first budget that does not improve; "
        "best_of_grid: the best over every budget; room: an SFT stage below --max-val on validation "
        "whose round-1 E-step spreads over options (see restpg_dspy.experiments.calibration)",
    )
    calibrate.add_argument("--epochs", required=True, help="comma-separated budgets, e.g. 1,2,4,8")
    calibrate.add_argument("--record", required=True, help="JSON file of every trial (resumes; commit it)")
    calibrate.add_argument("--max-val", type=float, default=0.9, help="room: validation score to stay below")
    calibrate.add_argument("--min-spread", type=float, default=0.25, help="room: round-1 option spread to reach")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved program or an uncompiled method (cached)")
    _add_common(evaluate)
    evaluate.add_argument("--program", help="program.json written by `restpg compile`")
    evaluate.add_argument(
        "--method", default="personalized", choices=UNCOMPILED, help="uncompiled program when --program is absent"
    )
    evaluate.add_argument("--metrics", help=f"comma-separated: {','.join(METRIC_NAMES)}")

    compare = commands.add_parser(
        "compare",
        help="paired difference of two evaluations of the same test examples (predictions files), resampling users",
    )
    compare.add_argument("predictions", nargs=2, help="two predictions files (A, B): the difference is A - B")
    compare.add_argument(
        "--names", help="comma-separated names of A and B (default: the shortest endings of their paths that differ)"
    )
    compare.add_argument("--metrics", help="comma-separated metric names (default: the scores both files have)")
    compare.add_argument(
        "--config",
        help="the config file of the run: its test split also compares seen and held-out wordings, and resamples "
        "evidence wordings as well as users",
    )

    report = commands.add_parser("report", help="render tables and plots of a compile run or a table run")
    report.add_argument("run_dir", help="a compile run directory (history.json) or a table run (results.json)")

    notes = commands.add_parser(
        "notes",
        help="what the reasoning a compile run trained on (teacher notes, kept traces) says about each example's "
        "options: how often it names the right one (tasks whose examples offer options, like implicit_choice)",
    )
    notes.add_argument("run_dir", help="a compile run directory (teacher_reasoning.jsonl, round_<r>/kept.jsonl)")
    notes.add_argument("--config", required=True, help="the config file of the run, which rebuilds its training split")
    return parser


def _config(args: argparse.Namespace) -> Any:
    from restpg_dspy.experiments import TableConfig

    overrides = {
        "student": args.student,
        "teacher": args.teacher,
        "judge": args.judge,
        "run_dir": args.run_dir,
        "seed": args.seed,
        "train_limit": args.limit,
        "test_limit": args.limit,
        "tasks": [args.data] if args.data else None,
        "synthetic_task": args.synthetic_task,
        "reasoning_max_tokens": args.reasoning_max_tokens,
        "response_max_tokens": args.response_max_tokens,
        "methods": args.methods.split(",") if getattr(args, "methods", None) else None,
        "metrics": args.metrics.split(",") if getattr(args, "metrics", None) else None,
    }
    if args.config:
        return TableConfig.from_file(args.config, **overrides)
    return TableConfig(**{k: v for k, v in overrides.items() if v is not None})


def run_compile(args: argparse.Namespace) -> None:
    from restpg_dspy.experiments import build_method, compile_method, config_lms, load_task

    config = _config(args)
    overrides = {"rounds": args.rounds, "samples_per_input": args.samples}
    student, _, judge = config_lms(config)
    trainset, _ = load_task(config.tasks[0], config)
    program, _ = build_method(args.method, config, student)
    run_dir = Path(config.run_dir)
    compiled = compile_method(
        args.method,
        program,
        config,
        trainset=trainset,
        judge=judge,
        run_dir=run_dir,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    # Saved beside and renamed: a crash while saving never leaves a half-written program.json.
    staged = run_dir / ".program.partial.json"
    compiled.save(str(staged))
    write_atomic(run_dir / "program_kind.json", json.dumps({"method": args.method, "config": vars(args)}, default=str))
    os.replace(staged, run_dir / "program.json")
    print(f"compiled program saved to {run_dir / 'program.json'}")


def run_evaluate(args: argparse.Namespace) -> None:
    from restpg_dspy.evals import evaluate
    from restpg_dspy.evals.report import format_interval
    from restpg_dspy.experiments import build_method, config_lms, load_task, report_metrics

    config = _config(args)
    student, _, judge = config_lms(config)
    _, testset = load_task(config.tasks[0], config)
    if args.program:
        path = Path(args.program)
        if not path.exists():
            raise UsageError(f"--program {path} does not exist")
        kind = json.loads((path.parent / "program_kind.json").read_text())["method"]
        program, _ = build_method(kind, config, student)
        program.load(str(path), allow_unsafe_lm_state=True)
    else:
        program, _ = build_method(args.method, config, student)
    result = evaluate(
        program,
        testset,
        report_metrics(config, judge),
        cache_dir=Path(config.run_dir) / "cache",
        num_threads=config.num_threads,
    )
    out = Path(config.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.to_jsonl(out / "evaluation.jsonl")
    result.to_csv(out / "evaluation.csv")
    for name, stats in result.summary().items():
        failures = f" errors={stats['errors']} missing_field={stats['missing_field']}" if "errors" in stats else ""
        print(f"{name:24s} {format_interval(stats)}  n={stats['n']}{failures}")
    print(f"per-example results: {out / 'evaluation.jsonl'} ({result.cached_predictions} predictions from the cache)")


def _distinct_names(paths: list[Path]) -> list[str]:
    """The shortest endings of ``paths`` that tell them apart, without the file's suffixes (``run/synthetic/sft``)."""
    stems = [[*p.parent.parts, p.name.split(".")[0]] for p in paths]
    for depth in range(2, max(map(len, stems)) + 1):
        names = ["/".join(parts[-depth:]) for parts in stems]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def run_compare(args: argparse.Namespace) -> None:
    from restpg_dspy.evals.paired import differences_table, paired_differences, read_rows
    from restpg_dspy.experiments import TableConfig, load_task
    from restpg_dspy.experiments.table import comparison_units, wording_subsets

    paths = [Path(p) for p in args.predictions]
    names = args.names.split(",") if args.names else _distinct_names(paths)
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(f"--names needs two different names, got {names}")
    rows = dict(zip(names, (read_rows(p) for p in paths), strict=True))
    if args.metrics:
        metrics = args.metrics.split(",")
    else:
        scored = [{k for row in r for k, v in row.items() if isinstance(v, float)} for r in rows.values()]
        metrics = sorted(scored[0] & scored[1])
    subsets: dict[str, set[str] | None] = {"all": None}
    units = None
    if args.config:
        config = TableConfig.from_file(args.config)
        testset = load_task(config.tasks[0], config)[1]
        subsets, units = wording_subsets(testset), comparison_units(testset)
    entries = paired_differences(rows, [tuple(names)], metrics, subsets, units)
    if not entries:
        raise UsageError(f"{paths[0]} and {paths[1]} share no scored example for the metrics {metrics}")
    print(differences_table(entries))


def run_notes(args: argparse.Namespace) -> None:
    import dspy

    from restpg_dspy.evals import notes_choice, option_accuracy
    from restpg_dspy.experiments import TableConfig, load_task
    from restpg_dspy.optimizers.report import round_responses, trained_reasoning

    notes, responses = trained_reasoning(args.run_dir), round_responses(args.run_dir)
    if not notes and not responses:
        raise UsageError(f"{args.run_dir} holds no teacher notes and no sampled responses (yet)")
    config = TableConfig.from_file(args.config)
    examples = {str(example.id): example for example in load_task(config.tasks[0], config)[0]}

    def table(title: str, sources: dict, columns: dict[str, str], grade: Callable[[Any, str], dict]) -> None:
        print(f"{title:<16}{'n':>5}" + "".join(f"  {heading}" for heading in columns.values()))
        for source, pairs in sources.items():
            unknown = sorted({i for i, _ in pairs} - set(examples))
            if unknown:
                raise UsageError(f"{source}: examples {unknown[:3]} are not in the training split of {args.config}")
            try:
                grades = [grade(examples[i], text) for i, text in pairs]
            except ValueError as err:
                raise UsageError(f"{config.tasks[0]}: {err}") from None
            rates = {key: sum(g[key] for g in grades) / len(grades) for key in columns}
            print(f"{source:<16}{len(grades):>5}" + "".join(f"  {rates[k]:>{len(t)}.3f}" for k, t in columns.items()))

    def response_choice(example: Any, response: str) -> dict[str, float]:
        return {"right": option_accuracy(example, dspy.Prediction(response=response))}

    if notes:
        columns = {
            "names_answer_only": "right option only",
            "names_wrong_option": "a wrong option",
            "names_no_option": "no option",
            "cites_post": "cites a post",
        }
        table("reasoning", notes, columns, notes_choice)
    if responses:
        if notes:
            print()
        table("responses", responses, {"right": "right option only"}, response_choice)


def run_report(run_dir: str) -> None:
    from restpg_dspy.evals.evaluate import TRUNCATION
    from restpg_dspy.evals.report import markdown_table, plot_scores, time_split_table
    from restpg_dspy.experiments.rounds import draw_round_curves
    from restpg_dspy.experiments.table import report_subsets
    from restpg_dspy.experiments.timings import time_split
    from restpg_dspy.optimizers.report import report_compile_run

    path = Path(run_dir)
    if (path / "history.json").exists():
        for file in report_compile_run(path):
            print(f"wrote {file}")
    elif (path / "results.json").exists():
        results = json.loads((path / "results.json").read_text())
        metrics = list(next(iter(next(iter(results.values())).values())))
        (path / "table.md").write_text(markdown_table(results, metrics) + "\n")
        print((path / "table.md").read_text())
        subsets = report_subsets(path, results, [m for m in metrics if m != TRUNCATION])
        if subsets:
            print(subsets.read_text())
        for metric in metrics:
            print(f"wrote {plot_scores(results, metric, path / f'scores_{metric}.png')}")
        for curves in sorted(path.glob("*/rounds.json")):
            draw_round_curves(json.loads(curves.read_text()), metrics[0], curves.parent)
            print(f"wrote {curves.parent / 'rounds.png'}")
        for history in sorted(path.glob("*/*/history.json")):
            report_compile_run(history.parent)
            print(f"wrote {history.parent / 'report.md'}")
        for timings in sorted(path.glob("*/timings.json")):
            split = time_split_table(time_split(timings.parent))
            (timings.parent / "timings.md").write_text(split + "\n")
            print(f"## Wall time per part: {timings.parent.name}\n\n{split}\n")
    else:
        raise UsageError(f"{path} holds neither a compile run (history.json) nor a table run (results.json)")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a call from Python: a fresh process may still pick its allocator
        from restpg_dspy.allocator import restart_with_jemalloc

        restart_with_jemalloc()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    truncations = TruncationCounter()
    logging.getLogger("dspy.clients.lm").addFilter(truncations)
    try:
        if args.command == "demo":
            from restpg_dspy.experiments.demo import run_demo

            run_demo(args.run_dir)
        elif args.command == "table":
            from restpg_dspy.experiments import run_table

            config = _config(args)
            run_table(config, only=args.only.split(",") if args.only else None)
            print(Path(config.run_dir, "table.md").read_text())
            print(Path(config.run_dir, "paired.md").read_text())
        elif args.command == "compile":
            run_compile(args)
        elif args.command == "calibrate":
            from restpg_dspy.experiments.calibration import calibrate

            epochs = [float(value) for value in args.epochs.split(",")]
            calibrate(
                _config(args),
                args.method,
                args.rule,
                epochs,
                args.record,
                max_val=args.max_val,
                min_spread=args.min_spread,
            )
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "compare":
            run_compare(args)
        elif args.command == "notes":
            run_notes(args)
        else:
            run_report(args.run_dir)
    except (UsageError, FileNotFoundError) as err:  # a mistake in the inputs: one line; anything else: a traceback
        if args.debug:
            raise
        print(f"restpg: error: {err}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger("dspy.clients.lm").removeFilter(truncations)
    if truncations.count:
        print(
            f"note: {truncations.count} generations stopped at the max_tokens limit "
            "(the max_tokens key of a --config file raises it)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
