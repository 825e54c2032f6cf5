"""Paired comparisons of two evaluation runs on the same examples, with intervals that resample users.

Two methods scored on the same test examples are compared example by example: the mean difference is far more
precise than two separate intervals suggest, because both methods face the same hard and easy examples. Examples of
one user are not independent (they share a profile), so the bootstrap resamples *users* (``by="user_id"``), each
drawn user bringing all of their examples.

Example:
    >>> from restpg_dspy.evals import paired_bootstrap
    >>> a = [{"id": "1", "user_id": "u1", "rouge_l": 0.9}, {"id": "2", "user_id": "u2", "rouge_l": 0.7}]
    >>> b = [{"id": "1", "user_id": "u1", "rouge_l": 0.5}, {"id": "2", "user_id": "u2", "rouge_l": 0.6}]
    >>> result = paired_bootstrap(a, b, "rouge_l")
    >>> round(result["mean_difference"], 2), result["n_pairs"], result["n_groups"]
    (0.25, 2, 2)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from restpg_dspy.errors import UsageError
from restpg_dspy.evals.evaluate import EvaluationResult
from restpg_dspy.files import read_json_lines


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The per-example rows of a predictions file (``EvaluationResult.to_jsonl``), checked line by line.

    Raises:
        UsageError: the file is missing, or a line is not a JSON object with an ``id`` (the line is named).
    """
    rows = read_json_lines(path, "predictions file")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "id" not in row:
            raise UsageError(f"{path}, row {number}: a row must be a JSON object with an 'id'")
    return rows


def _rows(result: EvaluationResult | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return result.rows if isinstance(result, EvaluationResult) else list(result)


def paired_bootstrap(
    result_a: EvaluationResult | list[dict[str, Any]],
    result_b: EvaluationResult | list[dict[str, Any]],
    metric: str,
    *,
    by: str | Mapping[str, str] = "user_id",
    ids: Iterable[str] | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``metric`` in ``result_a`` minus ``result_b`` over their shared examples, with a 95% interval.

    Args:
        result_a: An :class:`EvaluationResult` or its rows (dicts with ``id``, ``by`` and the metric).
        result_b: The same for the method compared against.
        metric: A metric name of both results (e.g. ``"rouge_l"``).
        by: The row field whose groups are resampled (``"user_id"``; ``"id"`` resamples examples), or a mapping
            from example id to group (e.g. the evidence wording each example hinges on).
        ids: Only these example ids (e.g. the held-out-wording examples).
        draws: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``mean_difference``, ``ci_low``, ``ci_high`` (95% percentile interval), ``n_pairs`` (examples scored in
        both), ``n_groups`` (users), and ``unpaired`` (examples scored in only one of the two, or in neither).

    Raises:
        ValueError: no example is scored in both results.
    """
    keep = None if ids is None else {str(i) for i in ids}
    a = {str(r["id"]): r for r in _rows(result_a) if keep is None or str(r["id"]) in keep}
    b = {str(r["id"]): r for r in _rows(result_b) if keep is None or str(r["id"]) in keep}
    groups: dict[str, list[float]] = defaultdict(list)
    unpaired = 0
    for key in sorted(a.keys() | b.keys()):
        left, right = a.get(key, {}).get(metric), b.get(key, {}).get(metric)
        if not isinstance(left, float) or not isinstance(right, float):
            unpaired += 1
            continue
        group = by.get(key, key) if isinstance(by, Mapping) else a[key].get(by, key)
        groups[str(group)].append(left - right)
    if not groups:
        raise UsageError(f"no example has a {metric!r} score in both results: nothing to compare")
    names = sorted(groups)
    sums = np.array([sum(groups[n]) for n in names])
    counts = np.array([len(groups[n]) for n in names])
    mean = float(sums.sum() / counts.sum())
    if len(names) < 2:
        low = high = mean
    else:
        picks = np.random.default_rng(seed).integers(0, len(names), size=(draws, len(names)))
        means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
        low, high = (float(q) for q in np.quantile(means, [0.025, 0.975]))
    return {
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "n_pairs": int(counts.sum()),
        "n_groups": len(names),
        "unpaired": unpaired,
    }


def format_difference(stats: dict[str, Any], digits: int = 3) -> str:
    """``"+0.123 [+0.050, +0.190]"``, or ``"–"`` when nothing was compared."""
    if not stats or stats.get("mean_difference") is None or math.isnan(stats["mean_difference"]):
        return "–"
    return f"{stats['mean_difference']:+.{digits}f} [{stats['ci_low']:+.{digits}f}, {stats['ci_high']:+.{digits}f}]"


def paired_differences(
    rows: dict[str, list[dict[str, Any]]],
    pairs: Iterable[tuple[str, str]],
    metrics: list[str],
    subsets: dict[str, set[str] | None],
    units: dict[str, str | Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Paired differences of each ``(better, worse)`` pair of methods (a pair with a method absent from ``rows`` is
    skipped).

    Args:
        rows: Per-example rows of each method's evaluation.
        pairs: ``(better, worse)`` method names: the difference is ``better − worse``.
        metrics: Metric names to compare.
        subsets: ``{name: example ids}`` to compare on (``None``: all examples), e.g. seen and held-out wordings.
        units: ``{name: by}`` of :func:`paired_bootstrap`, one interval each (default ``{"users": "user_id"}``).
            Examples that share more than a user, such as the same evidence sentence, are not independent
            either: resampling those groups shows how far a difference rests on a few of them.

    Returns:
        One entry per (pair, subset, unit, metric): ``better``, ``worse``, ``subset``, ``unit``, ``metric`` and
        the :func:`paired_bootstrap` fields.
    """
    entries = []
    for better, worse in pairs:
        if better not in rows or worse not in rows:
            continue
        for subset, ids in subsets.items():
            for unit, by in (units or {"users": "user_id"}).items():
                for metric in metrics:
                    try:
                        stats = paired_bootstrap(rows[better], rows[worse], metric, by=by, ids=ids)
                    except ValueError:
                        continue
                    pair = {"better": better, "worse": worse, "subset": subset, "unit": unit, "metric": metric}
                    entries.append({**pair, **stats})
    return entries


def differences_table(entries: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`paired_differences`: one row per pair, subset and resampled unit, one column per
    metric."""
    metrics = list(dict.fromkeys(e["metric"] for e in entries))
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for entry in entries:
        examples = f"{entry['subset']} (n={entry['n_pairs']}, {entry['n_groups']} {entry['unit']})"
        key = (f"{entry['better']} − {entry['worse']}", examples)
        cells[key][entry["metric"]] = format_difference(entry)
    lines = ["| pair | examples | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for (pair, subset), values in cells.items():
        lines.append(f"| {pair} | {subset} | " + " | ".join(values.get(m, "–") for m in metrics) + " |")
    return "\n".join(lines)
