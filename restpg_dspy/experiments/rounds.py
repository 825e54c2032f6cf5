"""Per-round curves: every stage of a compile run (the SFT stage, then each EM round) scored on held-out data.

A compiled program is its last (or best) stage; whether each round helped or hurt shows only when every stage's
model is scored on the same examples. :func:`round_curves` evaluates each finished stage of each compiled method on
named example sets (the validation split and the test split's held-out wordings, say), through the evaluation cache,
and :func:`plot_rounds` draws them in one figure. :func:`score_stage`, given to ``compile(..., on_stage=...)``,
scores each stage as soon as it is trained, while its adapter is at hand: a run resumed on another machine then draws
its curves from the cache without training its earlier stages again.

Example:
    >>> curves = {"rest-pg": {"sft": {"val": {"option_accuracy": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}}}
    >>> curve_table(curves, "option_accuracy").splitlines()[2]
    '| rest-pg | sft | 0.500 [0.400, 0.600] |'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.evals.report import format_interval, interval_errors, save_plot
from restpg_dspy.optimizers.restpg import stage_lm
from restpg_dspy.optimizers.traces import predictor_lms, with_lms, without_lms

Curves = dict[str, dict[str, dict[str, dict[str, Any]]]]  # method -> stage -> example set -> metric summary


def round_curves(
    compiled: dict[str, dspy.Module],
    example_sets: dict[str, list[dspy.Example]],
    metrics: list[Any],
    *,
    cache_dir: str | Path,
    num_threads: int = 16,
) -> Curves:
    """Score every finished stage of each compiled program on each example set.

    Args:
        compiled: Programs returned by an optimizer of this package (they carry ``restpg_history`` and
            ``restpg_run_dir``); programs without stages are skipped.
        example_sets: Named example sets, e.g. ``{"val": valset, "test held_out": held_out}``.
        metrics: The metrics to report.
        cache_dir: The evaluation cache (a stage scored before costs nothing).
        num_threads: Concurrent program runs.

    Returns:
        ``curves[method][stage][set]`` = the evaluation summary (per metric: mean, interval, n, errors).
    """
    curves: Curves = {}
    for method, program in compiled.items():
        stages = [e["stage"] for e in getattr(program, "restpg_history", []) if e.get("model") and not e.get("skipped")]
        if not stages:
            continue
        template = without_lms(program)
        base = next(iter(predictor_lms(program).values()))
        for stage in stages:
            lm = stage_lm(base, program.restpg_run_dir, stage)
            staged = with_lms(template, lambda _, lm=lm: lm)
            curves.setdefault(method, {})[stage] = score_stage(
                staged, example_sets, metrics, cache_dir=cache_dir, num_threads=num_threads
            )
    return curves


def score_stage(
    program: dspy.Module,
    example_sets: dict[str, list[dspy.Example]],
    metrics: list[Any],
    *,
    cache_dir: str | Path,
    num_threads: int = 16,
) -> dict[str, dict[str, Any]]:
    """One stage's point on the curves: ``program`` scored on each named example set, through the evaluation cache.

    Returns:
        ``scores[set]`` = the evaluation summary (per metric: mean, interval, n, errors).
    """
    from restpg_dspy.evals import evaluate

    return {
        name: evaluate(program, examples, metrics, cache_dir=cache_dir, num_threads=num_threads).summary()
        for name, examples in example_sets.items()
    }


def curve_table(curves: Curves, metric: str) -> str:
    """A Markdown table of ``metric`` per method and stage, one column per example set."""
    sets = list(dict.fromkeys(s for stages in curves.values() for scores in stages.values() for s in scores))
    lines = ["| method | stage | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    for method, stages in curves.items():
        for stage, scores in stages.items():
            cells = [format_interval(scores.get(s, {}).get(metric), 3) for s in sets]
            lines.append(f"| {method} | {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(curves: Curves, metric: str, path: str | Path) -> Path:
    """One line per (method, example set) across the stages, with 95% intervals, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, stages in curves.items():
        names = list(stages)
        sets = list(dict.fromkeys(s for scores in stages.values() for s in scores))
        for style, example_set in zip(("-o", "--s", ":^", "-.d"), sets, strict=False):
            means, errors = interval_errors([stages[stage].get(example_set, {}).get(metric, {}) for stage in names])
            axis.errorbar(names, means, yerr=errors, fmt=style, capsize=3, label=f"{method}, {example_set}")
    axis.set_xlabel("stage")
    return save_plot(figure, axis, metric, path)


def write_round_curves(
    sets: dict[str, list[dspy.Example]],
    compiled: dict[str, dspy.Module],
    metrics: list[Any],
    cache_dir: Path,
    out: Path,
    methods: list[str],
    num_threads: int = 16,
) -> None:
    """Score every stage of the compiled methods on ``sets`` (the validation split and the test split's held-out
    wordings, say); write ``rounds.json``, ``rounds.md`` and ``rounds.png`` (the first reported metric) in ``out``,
    in the order of ``methods``."""
    from restpg_dspy.evals.metrics import metric_name

    curves = round_curves(compiled, sets, metrics, cache_dir=cache_dir, num_threads=num_threads)
    if not curves:
        return
    if (out / "rounds.json").exists():  # methods run by an earlier invocation keep their curves
        curves = {**json.loads((out / "rounds.json").read_text()), **curves}
        curves = {method: curves[method] for method in methods if method in curves}
    (out / "rounds.json").write_text(json.dumps(curves, indent=2))
    print(draw_round_curves(curves, metric_name(metrics[0]), out), flush=True)


def draw_round_curves(curves: Curves, metric: str, out: Path) -> str:
    """Write ``rounds.md`` and ``rounds.png`` of ``metric`` in ``out``; return the table.

    ``restpg report`` on a table run draws them again from ``rounds.json``, so a figure follows today's plotting code.
    """
    table = curve_table(curves, metric)
    (out / "rounds.md").write_text(table + "\n")
    plot_rounds(curves, metric, out / "rounds.png")
    return table
