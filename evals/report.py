"""Reports: Markdown tables and PNG plots of evaluation results and of compile runs.

Example:
    >>> from restpg_dspy.evals.report import markdown_table
    >>> summary = {"rouge_l": {"mean": 0.31, "ci_low": 0.28, "ci_high": 0.34, "n": 32}}
    >>> print(markdown_table({"REST-PG": {"synthetic": summary}}, ["rouge_l"]))
    | method | synthetic rouge_l |
    |---|---|
    | REST-PG | 0.3100 [0.2800, 0.3400] |
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Summary = dict[str, dict[str, Any]]


def format_interval(stats: dict[str, Any] | None, digits: int = 4) -> str:
    """``"mean [low, high]"`` of one summary entry, or ``"–"`` when nothing was scored."""
    if not stats or stats.get("mean") is None or math.isnan(stats["mean"]):
        return "–"
    return f"{stats['mean']:.{digits}f} [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"


def markdown_table(results: dict[str, dict[str, Summary]], metrics: list[str]) -> str:
    """A methods × (task, metric) table of ``mean [95% interval]`` from ``results[method][task][metric]``."""
    tasks = list(dict.fromkeys(task for by_task in results.values() for task in by_task))
    header = ["method", *(f"{task} {metric}" for task in tasks for metric in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, by_task in results.items():
        cells = [format_interval(by_task.get(task, {}).get(metric)) for task in tasks for metric in metrics]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def plot_scores(results: dict[str, dict[str, Summary]], metric: str, path: str | Path) -> Path:
    """Bar chart of ``metric`` per method (one group per task) with 95% intervals, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    tasks = list(dict.fromkeys(task for by_task in results.values() for task in by_task))
    width = 0.8 / max(1, len(methods))
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * len(methods) / 2 + 3), 4))
    for offset, method in enumerate(methods):
        stats = [results[method].get(task, {}).get(metric, {}) for task in tasks]
        means = np.array([s.get("mean", np.nan) for s in stats], dtype=float)
        errors = np.array(
            [
                [m - s.get("ci_low", m) for m, s in zip(means, stats, strict=True)],
                [s.get("ci_high", m) - m for m, s in zip(means, stats, strict=True)],
            ],
            dtype=float,
        )
        axis.bar(np.arange(len(tasks)) + offset * width, means, width, yerr=errors, capsize=3, label=method)
    axis.set_xticks(np.arange(len(tasks)) + width * (len(methods) - 1) / 2, tasks)
    axis.set_ylabel(f"{metric} (95% bootstrap interval)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report_compile_run(run_dir: str | Path) -> list[Path]:
    """Render a compile run: ``rewards.png`` (reward distribution per round), ``keep_rates.png`` and
    ``report.md`` (the per-stage history). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from restpg_dspy.optimizers.restpg import STAGE_FIELDS
    from restpg_dspy.optimizers.run_dir import read_jsonl

    run_dir = Path(run_dir)
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    rounds = sorted((p for p in run_dir.glob("round_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    rewards, keep = {}, {}
    for folder in rounds:
        samples = read_jsonl(folder / "samples.jsonl")
        rewards[folder.name] = [s["reward"] for s in samples if s.get("reward") is not None]
        kept = len(read_jsonl(folder / "kept.jsonl"))
        keep[folder.name] = kept / len(rewards[folder.name]) if rewards[folder.name] else 0.0
    written = []
    if rewards:
        figure, axis = plt.subplots(figsize=(max(4, 1.4 * len(rewards) + 2), 4))
        axis.boxplot(list(rewards.values()), showmeans=True)
        axis.set_xticks(range(1, len(rewards) + 1), list(rewards))
        axis.set_ylabel("reward of sampled responses")
        axis.set_title("E-step rewards per round")
        figure.tight_layout()
        figure.savefig(run_dir / "rewards.png", dpi=120)
        plt.close(figure)
        figure, axis = plt.subplots(figsize=(max(4, 1.4 * len(keep) + 2), 3.5))
        axis.bar(list(keep), list(keep.values()))
        axis.set_ylim(0, 1)
        axis.set_ylabel("fraction of samples kept")
        figure.tight_layout()
        figure.savefig(run_dir / "keep_rates.png", dpi=120)
        plt.close(figure)
        written += [run_dir / "rewards.png", run_dir / "keep_rates.png"]
    present = [c for c in STAGE_FIELDS if any(c in entry for entry in history)]
    lines = [f"# Compile run {run_dir}", "", "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    lines += ["| " + " | ".join(str(entry.get(c, "")) for c in present) + " |" for entry in history]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return [*written, run_dir / "report.md"]
