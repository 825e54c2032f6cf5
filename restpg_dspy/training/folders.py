"""The folder adapters are published in: hidden staging folders of running trainings, resumable checkpoints of
interrupted ones, and the record of which adapter each finished job published (so the same job is never trained
twice)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from restpg_dspy.training.trainer import TrainingJobSpec

logger = logging.getLogger(__name__)

TRAINING_LOG = "training_log.json"
STAGING = ".training-"  # + the training process id + a random suffix
CHECKPOINTS = ".checkpoints-"  # + the job's key: the trainer checkpoints of a training that has not finished
TRAINED = ".trained-"  # + the job's key + .json: which published adapter that job trained


def remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders whose training process is gone (killed before its ``finally`` could clean up)."""
    for folder in root.glob(f"{STAGING}*-*"):
        pid = folder.name.removeprefix(STAGING).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def trained_before(root: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """The adapter (and its training log) that the job of ``key`` published under ``root``, if it is still there.

    A job run again (by another method of the same table, say) would compute the same weights from the same rows,
    settings, base weights and start (to the bit on a CPU), so it is served the earlier adapter instead.
    """
    record = root / f"{TRAINED}{key}.json"
    if not record.is_file():
        return None
    adapter = root / json.loads(record.read_text())["adapter"]
    log = adapter / TRAINING_LOG
    return (adapter, json.loads(log.read_text())) if log.is_file() else None


def claim_checkpoints(root: Path, job: TrainingJobSpec, key: str) -> Any:
    """Point ``job`` (whose key is ``key``) at its checkpoint folder under ``root`` and lock it; return the held lock.

    A second process training the same job at the same time trains without checkpoints (both would write them).
    """
    folder = root / f"{CHECKPOINTS}{key}"
    folder.mkdir(exist_ok=True)
    lock = (folder / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        logger.warning("another process is training the same job in %s; this one keeps no checkpoints", folder)
        return None
    _remove_incomplete_checkpoints(folder)
    job.checkpoints = str(folder)
    return lock


def _remove_incomplete_checkpoints(folder: Path) -> None:
    """Delete checkpoints whose writing was cut off: the trainer writes ``trainer_state.json`` last, and an older
    checkpoint is rotated out only after a newer one is complete, so the newest complete one remains."""
    for checkpoint in folder.glob("checkpoint-*"):
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            complete = str(state["global_step"]) == checkpoint.name.removeprefix("checkpoint-")
        except (OSError, ValueError, KeyError):
            complete = False
        if not complete:
            shutil.rmtree(checkpoint, ignore_errors=True)


def release_checkpoints(folder: Path, lock: Any, keep: bool) -> None:
    """Unlock ``folder``; delete it unless ``keep`` (an interrupted training) and it holds a checkpoint to resume."""
    if keep and any(folder.glob("checkpoint-*")):
        logger.warning("the training stopped; running the same job again resumes it from %s", folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    lock.close()
