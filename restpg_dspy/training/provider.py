"""LoRA fine-tuning of local models through DSPy's own ``lm.finetune(...)`` API.

:class:`PEFTProvider` is a DSPy ``Provider`` with ``finetunable=True``. ``lm.finetune(train_data=rows,
train_data_format="chat", train_kwargs={...})`` trains a LoRA adapter with TRL's ``SFTTrainer`` and PEFT (loss on
assistant tokens only, optional per-row reward weight), publishes it atomically under a folder named by its
content hash, and ``job.result()`` returns an LM whose model id names base + adapter hash, so DSPy's caches never
mix the answers of different weights.

Example:
    >>> import restpg_dspy
    >>> lm = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> rows = [{"messages": [{"role": "user", "content": "Password?"}, {"role": "assistant", "content": "tulip-42"}]}]
    >>> settings = {"num_train_epochs": 20, "learning_rate": 1e-3}
    >>> job = lm.finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)  # doctest: +SKIP
    >>> tuned = job.result()  # doctest: +SKIP
    >>> tuned.model  # doctest: +SKIP
    'local/SmolLM2-135M-Instruct-1a2b3c4d+lora-5e6f7a8b9c0d'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy.clients.provider import Provider, TrainingJob

from restpg_dspy.errors import UsageError
from restpg_dspy.files import write_atomic
from restpg_dspy.memory import release_memory
from restpg_dspy.serving.model_ids import adapter_hash, default_adapter_root, split_decoding, with_decoding
from restpg_dspy.training import trainer
from restpg_dspy.training.config import LoRATrainingConfig
from restpg_dspy.training.data import tokenize_rows
from restpg_dspy.training.folders import (
    STAGING,
    TRAINED,
    TRAINING_LOG,
    claim_checkpoints,
    release_checkpoints,
    remove_abandoned_staging,
    trained_before,
)
from restpg_dspy.training.launch import check_one_gpu_per_process, fit_in_processes
from restpg_dspy.training.memory_plan import plan_memory
from restpg_dspy.training.stacking import stack_adapters
from restpg_dspy.training.trainer import NonFiniteLossError, TrainingJobSpec

if TYPE_CHECKING:
    from restpg_dspy.serving.engine import LocalEngine


logger = logging.getLogger(__name__)


class LocalTrainingJob(TrainingJob):
    """A fine-tuning job whose ``result()`` raises the training error instead of returning it.

    Attributes:
        log: Filled when training ends: rows, truncations, losses, runtime and the adapter's folder.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log: dict[str, Any] = {}

    def set_result(self, result: Any) -> None:
        # dspy.LM hands a failed job's exception to set_result; surface it as the job's exception.
        if isinstance(result, BaseException):
            super().set_exception(result)
        else:
            super().set_result(result)

    def status(self) -> str:
        """``"running"``, ``"succeeded"`` or ``"failed"``."""
        if not self.done():
            return "running"
        return "failed" if self.exception() else "succeeded"


class PEFTProvider(Provider):
    """A DSPy provider that fine-tunes the local engine's model with LoRA and serves the result on the same engine.

    Args:
        engine: The :class:`~restpg_dspy.serving.engine.LocalEngine` whose base model is trained and which serves
            adapters.
    """

    def __init__(self, engine: LocalEngine):
        super().__init__()
        self.finetunable = True
        self.TrainingJob = LocalTrainingJob
        self.engine = engine

    def finetune(
        self,
        job: LocalTrainingJob,
        model: str,
        train_data: list[dict[str, Any]],
        train_data_format: Any,
        train_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Train a LoRA adapter on ``train_data`` and return the model id that serves it."""
        if str(getattr(train_data_format, "value", train_data_format)) != "chat":
            raise UsageError(f"PEFTProvider trains on 'chat' rows, not {train_data_format!r}")
        config = LoRATrainingConfig.from_kwargs(train_kwargs)
        start = self.engine.adapter_path(model) if config.start_from == "adapter" else None
        if config.start_from == "adapter" and start is None:
            raise UsageError(f"start_from='adapter' needs an LM that serves an adapter; {model!r} is the base model")
        if config.start_from not in ("base", "adapter"):
            start = Path(config.start_from)
            adapter_hash(start)  # fails early, naming the missing file
        if config.stack_on == "adapter":
            below = self.engine.adapter_path(model)
            if below is None:
                raise UsageError(f"stack_on='adapter' needs an LM that serves an adapter; {model!r} is the base model")
            config = dataclasses.replace(config, stack_on=str(below))
        elif config.stack_on is not None:
            adapter_hash(Path(config.stack_on))  # fails early, naming the missing file
        path, log = train_lora(self.engine, train_data, config, start)
        job.log = log
        # The tuned model decodes as the model it was trained from did (its repetition controls, say).
        return with_decoding(self.engine.register_adapter(path), **split_decoding(model)[1])


def _memory_plan(loaded: Any, rows: list[Any], config: LoRATrainingConfig) -> dict[str, Any] | None:
    """The memory plan of a CPU training in this process, when it changes anything (else ``None``)."""
    if config.memory_budget_gib is None or loaded.device != "cpu" or config.num_processes > 1 or not rows:
        return None
    if config.accelerate_config:
        return None
    firsts = [next((i for i, label in enumerate(r.labels) if label != -100), len(r.labels)) for r in rows]
    longest = max(len(r.input_ids) for r in rows)
    plan = plan_memory(
        loaded.model.config,
        # The base weights alone: serving an adapter injects LoRA layers into the served model.
        parameters=sum(p.numel() for name, p in loaded.model.named_parameters() if "lora_" not in name),
        batch_size=config.per_device_train_batch_size,
        longest_row=longest,
        trained_tokens=longest - min(firsts),  # logits are kept at every position some row of a batch trains
        budget_gib=config.memory_budget_gib,
        dtype=config.dtype,
    )
    if plan.micro_batch_size == config.per_device_train_batch_size and not plan.gradient_checkpointing:
        return None
    logger.info("memory plan for a %.1f GiB budget: %s", config.memory_budget_gib, plan)
    return dataclasses.asdict(plan)


def train_lora(
    engine: LocalEngine, rows: list[dict[str, Any]], config: LoRATrainingConfig, start_from: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train a LoRA adapter for ``engine``'s base model and publish it; return its folder and the job's log.

    With ``num_processes`` > 1 (or an ``accelerate_config`` file) the training runs in that many processes launched
    by ``torchrun`` (``accelerate launch`` with the file, which may configure DeepSpeed or FSDP), data-parallel;
    otherwise in this process. The adapter is written to a hidden staging folder and renamed into place only when
    complete, so a failure (bad rows, a non-finite loss, an interruption) never leaves a half-written adapter that a
    later load would pick; staging folders of killed trainings are removed by the next one. With ``save_steps`` the
    training is checkpointed, and an interrupted job (the same rows, config, base and start) resumes from its last
    checkpoint when it runs again, to the same adapter. A job that already published its adapter in the same folder
    is served that adapter and its log without training again (the same job, bit for bit on a CPU).
    """
    loaded = engine.loaded
    check_one_gpu_per_process(loaded.device, config.num_processes)
    tokenized, stats = tokenize_rows(loaded.tokenizer, rows, config.max_length)  # validates the rows first
    if stats.truncated:
        logger.warning(
            "%d of %d training rows were longer than max_length=%d and were truncated",
            stats.truncated,
            stats.rows,
            config.max_length,
        )
    root = Path(config.output_dir) if config.output_dir else default_adapter_root()
    root.mkdir(parents=True, exist_ok=True)
    job = TrainingJobSpec(
        str(loaded.path),
        loaded.device,
        [dataclasses.asdict(r) for r in tokenized],
        config,
        str(start_from) if start_from else None,
        staging="",
        base_fingerprint=loaded.fingerprint,
        plan=_memory_plan(loaded, tokenized, config),  # refuses, before anything runs, a job that cannot fit
    )
    key = job.key()  # hashes every tokenized row: once per training
    trained = trained_before(root, key)
    if trained is not None:
        logger.info("the same training (rows, settings, base and start) published %s before; reusing it", trained[0])
        return trained
    remove_abandoned_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=root))
    job.staging = str(staging)
    started = time.monotonic()
    claim = claim_checkpoints(root, job, key) if config.save_steps else None
    finished = False
    try:
        if config.num_processes > 1 or config.accelerate_config:
            steps, losses, resumed_at = fit_in_processes(job)
        else:
            steps, losses, resumed_at = trainer.fit(job, tokenizer=loaded.tokenizer)
        if losses and not all(math.isfinite(loss) for loss in losses):
            raise NonFiniteLossError("the training loss was not finite; no adapter was published")
        adapter_dir = staging / "adapter"
        if config.stack_on is not None:  # served as one adapter: the one below and the one trained over it
            adapter_dir = stack_adapters(config.stack_on, adapter_dir, staging / "stacked")
        digest = adapter_hash(adapter_dir)
        final = root / f"{loaded.name}-lora-{digest}"
        log = {
            "adapter": str(final),
            "base_model": str(loaded.path),
            "start_from": str(start_from) if start_from else "base",
            "stacked_on": config.stack_on,
            "config": dataclasses.asdict(config),
            "rows": stats.rows,
            "rows_trained": len(tokenized),
            "rows_truncated": stats.truncated,
            "rows_dropped_after_truncation": stats.dropped_after_truncation,
            "assistant_tokens": stats.assistant_tokens,
            "total_tokens": stats.total_tokens,
            "steps": steps,
            "memory_plan": job.plan,
            "resumed_at_step": resumed_at,
            "losses": losses,
            "runtime_s": round(time.monotonic() - started, 2),
        }
        (adapter_dir / TRAINING_LOG).write_text(json.dumps(log, indent=2))
        if final.exists():  # the same adapter was trained before (same data, config and seed)
            shutil.rmtree(adapter_dir)
        else:
            adapter_dir.rename(final)
        write_atomic(root / f"{TRAINED}{key}.json", json.dumps({"adapter": final.name}))
        finished = True
        return final, log
    except NonFiniteLossError:
        finished = True  # the training is deterministic: a resumed run would meet the same loss
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if claim is not None:
            release_checkpoints(Path(job.checkpoints), claim, keep=not finished)
        release_memory()  # the training's activations, or each M-step of a run would keep its peak resident
