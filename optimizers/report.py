"""The report of a compile run: the reward distribution and keep rate per round, the per-stage history, the wall time
of each part, and the reasoning it trained on (the teacher's notes and each round's kept traces).

Example:
    >>> from restpg_dspy.optimizers.report import report_compile_run
    >>> report_compile_run("runs/demo/synthetic/rest-pg")  # doctest: +SKIP
    [PosixPath('runs/demo/synthetic/rest-pg/rewards.png'), ...]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from restpg_dspy.evals.report import time_split_table
from restpg_dspy.optimizers.restpg import STAGE_FIELDS
from restpg_dspy.optimizers.run_dir import TIMINGS, read_jsonl


def report_compile_run(run_dir: str | Path) -> list[Path]:
    """Render a compile run: ``rewards.png`` (reward distribution per round), ``keep_rates.png`` and
    ``report.md`` (the per-stage history, and the wall time of each part with its share). Returns the files
    written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    rewards, keep = {}, {}
    for folder in _rounds(run_dir):
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
    timings = run_dir / TIMINGS
    if timings.exists():
        lines += ["", "## Wall time per part", "", time_split_table(json.loads(timings.read_text()))]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return [*written, run_dir / "report.md"]


def _rounds(run_dir: Path) -> list[Path]:
    return sorted((p for p in run_dir.glob("round_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))


def trained_reasoning(run_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The reasoning a compile run trained on, by source: ``teacher`` (the hindsight notes, one per example the
    teacher explained) and ``round_<r> kept`` (the reasoning step of each trace the round kept), as (example id,
    reasoning) pairs. A source without reasoning (a run without a teacher, a program without a reasoning step) is
    left out.

    Raises:
        FileNotFoundError: ``run_dir`` is not a compile run (it has no ``config.json``).
    """
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a compile run directory: it has no config.json")
    field = json.loads(config.read_text()).get("reasoning_field", "reasoning")
    teacher = read_jsonl(run_dir / "teacher_reasoning.jsonl")  # a row without reasoning holds the teacher's error
    sources = {"teacher": [(row["id"], row["reasoning"]) for row in teacher if "reasoning" in row]}
    for folder in _rounds(run_dir):
        kept = [(sample["id"], _reasoning(sample["trace"], field)) for sample in read_jsonl(folder / "kept.jsonl")]
        sources[f"{folder.name} kept"] = [(i, text) for i, text in kept if text is not None]
    return {source: pairs for source, pairs in sources.items() if pairs}


def round_responses(run_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The responses each E-step drew and chose, by source: ``round_<r> sampled`` (every sample that produced a
    response) and ``round_<r> kept`` (the samples the round trained on), as (example id, response) pairs. Unlike
    :func:`trained_reasoning` it covers programs without a reasoning step (ReST-EM's) too.
    """
    sources = {}
    for folder in _rounds(Path(run_dir)):
        for name, file in (("sampled", "samples.jsonl"), ("kept", "kept.jsonl")):
            pairs = [(sample["id"], _response(sample.get("trace") or [])) for sample in read_jsonl(folder / file)]
            sources[f"{folder.name} {name}"] = [(i, text) for i, text in pairs if text is not None]
    return {source: pairs for source, pairs in sources.items() if pairs}


def _response(trace: list[dict[str, Any]]) -> str | None:
    """The last step's ``response`` in ``trace``; ``None`` for a sample that failed before answering."""
    return trace[-1]["outputs"].get("response") if trace else None


def _reasoning(trace: list[dict[str, Any]], field: str) -> str | None:
    """The reasoning step's output in ``trace``; ``None`` for a program without one (ReST-EM's traces, say)."""
    return next((call["outputs"][field] for call in trace if field in call["outputs"]), None)
