"""Where a table run's wall time went: each compiled method's compile-run parts, then its evaluation.

``restpg report`` prints the split with each part's share (:func:`restpg_dspy.evals.report.time_split_table`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from restpg_dspy.optimizers.run_dir import TIMINGS


def time_split(task_dir: str | Path) -> dict[str, float]:
    """Wall seconds per part of one task of a table run (``<run_dir>/<task>``), added up over its invocations.

    A compiled method's time is split into its compile run's parts (``timings.json`` there: the teacher, each
    stage's training, sampling, validation and round-curve scoring), then its evaluation; a method that compiles
    nothing has its evaluation only.
    """
    task_dir = Path(task_dir)
    timings = _read_json(task_dir / "timings.json") or {}
    runs = _read_json(task_dir / "compile_runs.json") or {}
    parts: dict[str, float] = {}
    for method, spent in timings.items():
        if method == "round_curves":
            parts["round curves"] = spent.get("evaluate_s", 0.0)
            continue
        compile_parts = _read_json(Path(runs[method], TIMINGS)) if method in runs else None
        if compile_parts:
            parts.update({f"{method}: {part}": seconds for part, seconds in compile_parts.items()})
        elif spent.get("compile_s"):
            parts[f"{method}: compile"] = spent["compile_s"]
        parts[f"{method}: evaluation"] = spent.get("evaluate_s", 0.0)
    return parts


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None
