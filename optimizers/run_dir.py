"""A compile run's directory: readable JSON/JSONL state that lets an interrupted compile resume.

Layout::

    config.json                 what this run computes (a different configuration is refused)
    teacher_reasoning.jsonl     one line per training example: the teacher's hindsight reasoning or its error
    sft/rows.jsonl, sft/model.json
    round_<r>/samples.jsonl     every sampled trace with its reward, appended as it completes
    round_<r>/kept.jsonl, round_<r>/rows.jsonl, round_<r>/model.json, round_<r>/metrics.json
    history.json                per-round summary
    timings.json                wall seconds spent in each stage's parts, added up over resumed runs
    adapters/                   LoRA adapters trained by the local provider
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.files import write_atomic

TIMINGS = "timings.json"
FORMAT = 2  # 2: the reward is recorded by its identity (``metric_identity``), not by its name alone


class RunDirConflict(UsageError):
    """The run directory holds a run with a different configuration."""


def _shown(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _migrated(path: Path, stored: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A configuration written before ``FORMAT`` 2 in today's form, or a refusal when it cannot be told apart.

    Format 1 named the reward by its qualified name only: a plain function of that name is the same reward; an
    object (a judge, a weighted mean) cannot be identified from its class name.
    """
    old, new = stored.get("metric"), config.get("metric")
    if isinstance(old, str) and isinstance(new, str) and new.rsplit(".", 1)[-1] == old:
        return {**stored, "metric": new, "format": FORMAT}
    raise RunDirConflict(
        f"run directory {path} was written by an older restpg-dspy that recorded the reward only as {old!r}, which "
        f"does not tell whether it was this reward ({_shown(new)}); use a new run_dir, or delete this one to start "
        "over"
    )


class RunDir:
    """Reads and writes the files of one compile run; appends are thread-safe and line-atomic.

    Args:
        path: The folder (created if missing).
        config: The JSON-serializable configuration of this run (``format`` is added). An existing folder must hold
            the same one; one written by an older version is migrated where that is unambiguous.

    Raises:
        RunDirConflict: the folder was created with a different configuration (each differing key is listed with the
            stored and the requested value), or by an older version in a form that cannot be migrated.
    """

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        stored = self.read_json("config.json")
        config = json.loads(json.dumps({**config, "format": FORMAT}))  # the form it will have on disk
        if stored is not None and "format" not in stored:
            stored = _migrated(self.path, stored, config)
            if stored == config:
                self.write_json("config.json", stored)
        if stored is None:
            self.write_json("config.json", config)
        elif changed := sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k)):
            # A setting that a later version added is absent from older runs: at its None default it is the same run.
            details = "; ".join(
                f"{k}: {_shown(stored.get(k))} in the run, {_shown(config.get(k))} now" for k in changed
            )
            raise RunDirConflict(
                f"run directory {self.path} holds a run with a different configuration ({details}); use a new "
                "run_dir, or delete this one to start over"
            )

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the wall time of the block to ``part`` (``"round_1.sample"``, say) in ``timings.json``.

        Times add up over the runs that resume this one, so the file tells what each part cost in all; a part read
        back from the directory adds almost nothing.
        """
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                timings = self.read_json(TIMINGS) or {}
                timings[part] = round(timings.get(part, 0.0) + time.perf_counter() - started, 2)
                self.write_json(TIMINGS, timings)

    def file(self, name: str) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, value: Any) -> None:
        self._write_atomic(name, json.dumps(value, indent=2, default=str))

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path / name)

    def append_jsonl(self, name: str, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=str) + "\n"
        with self._lock, self.file(name).open("ab+") as out:
            out.seek(0, os.SEEK_END)
            if out.tell():
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":  # a line cut off by a crash: start a fresh one
                    line = "\n" + line
            out.write(line.encode())
            out.flush()

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        self._write_atomic(name, "".join(json.dumps(row, default=str) + "\n" for row in rows))

    def _write_atomic(self, name: str, text: str) -> None:
        write_atomic(self.file(name), text)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file, ``[]`` when it is missing (a line cut off by a crash is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
