"""Reports: Markdown tables and PNG plots of evaluation results.

Example:
    >>> from restpg_dspy.evals.report import markdown_table
    >>> summary = {"rouge_l": {"mean": 0.31, "ci_low": 0.28, "ci_high": 0.34, "n": 32}}
    >>> print(markdown_table({"REST-PG": {"synthetic": summary}}, ["rouge_l"]))
    | method | synthetic rouge_l |
    |---|---|
    | REST-PG | 0.3100 [0.2800, 0.3400] |
"""

from __future__ import annotations

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


def time_split_table(parts: dict[str, float]) -> str:
    """A Markdown table of wall seconds per part of a run, each with its share of their total.

    Example:
        >>> print(time_split_table({"teacher": 30.0, "sft.train": 90.0}))
        | part | seconds | share |
        |---|---|---|
        | teacher | 30.0 | 25.0% |
        | sft.train | 90.0 | 75.0% |
        | total | 120.0 | 100.0% |
    """
    total = sum(parts.values())
    lines = ["| part | seconds | share |", "|---|---|---|"]
    for part, seconds in [*parts.items(), ("total", total)]:
        lines.append(f"| {part} | {seconds:.1f} | {100 * seconds / total if total else 0.0:.1f}% |")
    return "\n".join(lines)


def interval_errors(stats: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Means and ``(below, above)`` error-bar lengths of summary entries, for matplotlib's ``yerr``."""
    import numpy as np

    means = np.array([s.get("mean", np.nan) for s in stats], dtype=float)
    below = [m - s.get("ci_low", m) for m, s in zip(means, stats, strict=True)]
    above = [s.get("ci_high", m) - m for m, s in zip(means, stats, strict=True)]
    return means, np.array([below, above], dtype=float)


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
        means, errors = interval_errors(stats)
        axis.bar(np.arange(len(tasks)) + offset * width, means, width, yerr=errors, capsize=3, label=method)
    axis.set_xticks(np.arange(len(tasks)) + width * (len(methods) - 1) / 2, tasks)
    return save_plot(figure, axis, metric, path)


def save_plot(figure: Any, axis: Any, metric: str, path: str | Path) -> Path:
    """Label the y axis with ``metric``'s intervals, add the legend, write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    axis.set_ylabel(f"{metric} (95% bootstrap interval)")
    # Beside the axes, where it can never hide a point or an interval.
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
