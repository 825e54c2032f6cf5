"""A compile run's directory: readable JSON/JSONL state that lets an interrupted compile resume.

Layout::

    config.json                 what this run computes (a different configuration is refused)
    teacher_reasoning.jsonl     one line per training example: the teacher's hindsight reasoning or its error
    sft/rows.jsonl, sft/model.json
    round_<r>/samples.jsonl     every sampled trace with its reward, appended as it completes
    round_<r>/kept.jsonl, round_<r>/rows.jsonl, round_<r>/model.json, round_<r>/metrics.json
    history.json                per-round summary
    adapters/                   LoRA adapters trained by the local provider
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any


class RunDirConflict(ValueError):
    """The run directory holds a run with a different configuration."""


class RunDir:
    """Reads and writes the files of one compile run; appends are thread-safe and line-atomic.

    Args:
        path: The folder (created if missing).
        config: The JSON-serializable configuration of this run. An existing folder must hold the same one.

    Raises:
        RunDirConflict: the folder was created with a different configuration (the differing keys are listed).
    """

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        stored = self.read_json("config.json")
        config = json.loads(json.dumps(config))  # the form it will have on disk
        if stored is None:
            self.write_json("config.json", config)
        elif stored != config:
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise RunDirConflict(
                f"run directory {self.path} holds a run with a different configuration (differs in: "
                f"{', '.join(changed)}); use a new run_dir, or delete this one to start over"
            )

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
        """A reader sees the old file or the new one, never half of it."""
        target = self.file(name)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, target)


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
