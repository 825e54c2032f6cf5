"""Files written so that a reader (or a run resumed after a crash) sees the old content or the new, never half, and
JSON Lines read strictly, each bad line named.

Example:
    >>> import tempfile, pathlib
    >>> from restpg_dspy.files import write_atomic
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> write_atomic(path, '{"rounds": 2}')
    >>> path.read_text()
    '{"rounds": 2}'
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json_lines(path: str | Path, what: str = "file") -> list[Any]:
    """The values of a JSON Lines file, blank lines skipped.

    Raises:
        UsageError: the file is missing (called ``what``) or a line is not JSON (the file and line are named).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    values = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    return values
