"""The ``restpg`` command: demo, compile, evaluate, table and report.

Backends are strings everywhere: ``local`` (the embedded SmolLM2-135M-Instruct), ``local:<folder or hf id>``, or
any LiteLLM model such as ``openai/gpt-4o-mini``. Data: ``synthetic`` or ``longlamp:<task>[:<file with {split}>]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.files import write_atomic

DEMO_CONFIG: dict[str, Any] = {
    "run_dir": "runs/demo",
    "teacher": "oracle",
    "methods": ["personalized", "sft", "rest-pg"],
    "metrics": ["option_accuracy", "rouge_l"],
    "synthetic_task": "implicit_choice",
    "synthetic_train_users": 6,
    "synthetic_test_users": 6,
    "k": 4,
    "max_tokens": 64,
    "reasoning_max_tokens": 64,
    "response_max_tokens": 64,
    "optimizer": {"rounds": 1, "samples_per_input": 4, "max_per_input": 1},
    "train_kwargs": {"num_train_epochs": 3, "learning_rate": 2e-3, "per_device_train_batch_size": 8, "max_length": 512},
}
METHOD_LABELS = {"personalized": "uncompiled PersonalizedWriter", "sft": "SFT (RAGWriter)", "rest-pg": "REST-PG"}


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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML file with the same keys as the options (options win)")
    parser.add_argument("--student", help="backend of the trained model: local, local:<path or hf id> (default local)")
    parser.add_argument(
        "--teacher",
        help="backend that writes hindsight reasoning (default: the student); 'oracle' is the implicit_choice "
        "task's oracle, standing in for a large teacher LM offline",
    )
    parser.add_argument("--judge", help="backend of an LLM judge; adds the llm_judge metric")
    parser.add_argument(
        "--data", help="synthetic, longlamp:<task> (the hub) or longlamp:<task>:<path with {split}> (local files)"
    )
    parser.add_argument("--limit", type=int, help="most train and test examples (LongLaMP)")
    parser.add_argument("--run-dir", help="where runs, caches, tables and plots are written")
    parser.add_argument("--seed", type=int, help="data sampling seed")
    parser.add_argument(
        "--synthetic-task", help="the task of --data synthetic: implicit_choice (default) or life_facts"
    )
    parser.add_argument("--reasoning-max-tokens", type=int, help="token budget of the reasoning step")
    parser.add_argument("--response-max-tokens", type=int, help="token budget of the response step")


def build_parser() -> argparse.ArgumentParser:
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
    table.add_argument(
        "--methods", help="comma-separated: no-personalization,rag,personalized,sft,sft-reasoning,rest-em,rest-pg"
    )
    table.add_argument("--metrics", help="comma-separated: rouge_1,rouge_l,meteor,option_accuracy,llm_judge")

    compile_ = commands.add_parser("compile", help="compile one method and save the program")
    _add_common(compile_)
    compile_.add_argument("--method", default="rest-pg", help="sft, sft-reasoning, rest-em or rest-pg (default)")
    compile_.add_argument("--rounds", type=int, help="EM rounds")
    compile_.add_argument("--samples", type=int, help="samples per input in each E-step")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved program or an uncompiled method (cached)")
    _add_common(evaluate)
    evaluate.add_argument("--program", help="program.json written by `restpg compile`")
    evaluate.add_argument(
        "--method",
        default="personalized",
        help="uncompiled program when --program is absent: no-personalization, rag, personalized",
    )
    evaluate.add_argument("--metrics", help="comma-separated: rouge_1,rouge_l,meteor,option_accuracy,llm_judge")

    report = commands.add_parser("report", help="render tables and plots of a compile run or a table run")
    report.add_argument("run_dir", help="a compile run directory (history.json) or a table run (results.json)")
    return parser


def _config(args: argparse.Namespace) -> Any:
    from restpg_dspy.evals.table import TableConfig

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


def run_demo(run_dir: str) -> None:
    """The main job on the embedded model: compile SFT and REST-PG, evaluate on held-out users, print the table."""
    from restpg_dspy.evals.paired import format_difference
    from restpg_dspy.evals.report import format_interval, report_compile_run
    from restpg_dspy.evals.table import TableConfig, run_table

    config = TableConfig(**{**DEMO_CONFIG, "run_dir": run_dir})
    print(
        f"restpg demo: {', '.join(METHOD_LABELS[m] for m in config.methods)} on the synthetic {config.synthetic_task} "
        f"task ({config.synthetic_train_users} training users, {config.synthetic_test_users} held-out users), "
        "embedded SmolLM2-135M-Instruct as the student; REST-PG's hindsight reasoning comes from an ORACLE teacher "
        f"that knows the task's latent traits, standing in for a large teacher LM; outputs in {run_dir}/",
        flush=True,
    )
    results = run_table(config)
    for method in config.methods:
        if (Path(run_dir) / "synthetic" / method / "history.json").exists():
            report_compile_run(Path(run_dir) / "synthetic" / method)
    print("\nHeld-out users (mean [95% bootstrap interval]):\n")
    print(f"{'method':32s}" + "".join(f"{m:>28s}" for m in config.metrics))
    for method in config.methods:
        summary = results[method]["synthetic"]
        print(
            f"{METHOD_LABELS[method]:32s}" + "".join(format_interval(summary[m], 3).rjust(28) for m in config.metrics)
        )
    paired = json.loads((Path(run_dir) / "paired.json").read_text())["synthetic"]
    print("\nREST-PG minus SFT, paired by example (95% interval resampling users):\n")
    print(f"{'examples':32s}" + "".join(f"{m:>28s}" for m in config.metrics))
    for subset in ("all", "seen", "held_out"):
        cells = {e["metric"]: e for e in paired if (e["better"], e["worse"], e["subset"]) == ("rest-pg", "sft", subset)}
        if cells:
            label = f"{subset} wordings (n={next(iter(cells.values()))['n_pairs']})"
            print(f"{label:32s}" + "".join(format_difference(cells.get(m, {})).rjust(28) for m in config.metrics))
    print(
        f"\nTable: {run_dir}/table.md   paired differences: {run_dir}/paired.md   plots: {run_dir}/scores_*.png, "
        f"{run_dir}/synthetic/rest-pg/rewards.png"
    )


def run_compile(args: argparse.Namespace) -> None:
    from restpg_dspy.evals.table import build_method, compile_method, config_lms, load_task

    config = _config(args)
    if args.method not in ("sft", "sft-reasoning", "rest-em", "rest-pg"):
        raise UsageError(f"--method must be sft, sft-reasoning, rest-em or rest-pg, not {args.method!r}")
    overrides = {"rounds": args.rounds, "samples_per_input": args.samples}
    student, teacher, judge = config_lms(config)
    trainset, _ = load_task(config.tasks[0], config)
    program, optimizer = build_method(args.method, config, student)
    run_dir = Path(config.run_dir)
    compiled = compile_method(
        program,
        optimizer,
        config,
        trainset=trainset,
        teacher=teacher,
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
    from restpg_dspy.evals.table import build_method, config_lms, load_task, report_metrics

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
        if args.method not in ("no-personalization", "rag", "personalized"):
            raise UsageError("without --program, --method must be no-personalization, rag or personalized")
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
        print(
            f"{name:24s} {format_interval(stats)}  n={stats['n']} "
            f"errors={stats['errors']} missing_field={stats['missing_field']}"
        )
    print(f"per-example results: {out / 'evaluation.jsonl'} ({result.cached_predictions} predictions from the cache)")


def run_report(run_dir: str) -> None:
    from restpg_dspy.evals.report import markdown_table, plot_scores, report_compile_run

    path = Path(run_dir)
    if (path / "history.json").exists():
        for file in report_compile_run(path):
            print(f"wrote {file}")
    elif (path / "results.json").exists():
        results = json.loads((path / "results.json").read_text())
        metrics = list(next(iter(next(iter(results.values())).values())))
        (path / "table.md").write_text(markdown_table(results, metrics) + "\n")
        print((path / "table.md").read_text())
        for metric in metrics:
            print(f"wrote {plot_scores(results, metric, path / f'scores_{metric}.png')}")
        for history in sorted(path.glob("*/*/history.json")):
            report_compile_run(history.parent)
            print(f"wrote {history.parent / 'report.md'}")
    else:
        raise UsageError(f"{path} holds neither a compile run (history.json) nor a table run (results.json)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    truncations = TruncationCounter()
    logging.getLogger("dspy.clients.lm").addFilter(truncations)
    try:
        if args.command == "demo":
            run_demo(args.run_dir)
        elif args.command == "table":
            from restpg_dspy.evals.table import run_table

            config = _config(args)
            run_table(config)
            print(Path(config.run_dir, "table.md").read_text())
            print(Path(config.run_dir, "paired.md").read_text())
        elif args.command == "compile":
            run_compile(args)
        elif args.command == "evaluate":
            run_evaluate(args)
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
