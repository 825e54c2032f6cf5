"""Files written so that a reader (or a run resumed after a crash) sees the old content or the new, never half.

Example:
    >>> import tempfile, pathlib
    >>> from restpg_dspy.files import write_atomic
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> write_atomic(path, '{"rounds": 2}')
    >>> path.read_text()
    '{"rounds": 2}'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
