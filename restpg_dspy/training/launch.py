"""Multi-process training: :func:`fit` launched in several processes by ``torchrun`` or ``accelerate launch``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from restpg_dspy.errors import UsageError
from restpg_dspy.training.trainer import NonFiniteLossError, TrainingJobSpec


def check_one_gpu_per_process(device: str, num_processes: int) -> None:
    """Refuse, before anything runs, a launched training on a GPU that has more processes than the machine has GPUs
    (each process takes the GPU of its local rank)."""
    if num_processes > 1 and device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if num_processes > gpus:
            raise UsageError(
                f"num_processes={num_processes} trains one process per GPU, but this machine has {gpus}; "
                f"lower num_processes to {gpus} or less (or raise per_device_train_batch_size)"
            )


def fit_in_processes(job: TrainingJobSpec) -> tuple[int, list[float], int]:
    """Run :func:`fit` in ``num_processes`` launched processes; their output goes to ``<staging>/launch.log``."""
    import subprocess
    import sys

    config, staging = job.config, Path(job.staging)
    spec = staging / "job.json"
    job.save(spec)
    worker = ["-m", "restpg_dspy.training.trainer", str(spec)]
    if config.accelerate_config:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config.accelerate_config]
        command += ["--num_processes", str(config.num_processes), *worker]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(config.num_processes), *worker]
    log = staging / "launch.log"
    with log.open("w") as out:
        finished = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    if finished.returncode != 0 or not (staging / "fit.json").exists():
        tail = log.read_text()[-3000:]
        if "NonFiniteLossError" in tail:
            raise NonFiniteLossError("the training loss was not finite in a launched process; no adapter was published")
        raise RuntimeError(f"the launched training ({' '.join(command[1:4])} ...) failed; its output ends:\n{tail}")
    result = json.loads((staging / "fit.json").read_text())
    return result["steps"], result["losses"], result["resumed_at_step"]
