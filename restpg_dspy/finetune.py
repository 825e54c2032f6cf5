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
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy.clients.provider import Provider, TrainingJob

from restpg_dspy.errors import UsageError
from restpg_dspy.files import write_atomic
from restpg_dspy.memory import release_memory
from restpg_dspy.memory_plan import plan_memory
from restpg_dspy.models import accepts_logits_to_keep, load_causal_lm, resolve_dtype
from restpg_dspy.serving import adapter_hash, default_adapter_root, split_decoding, with_decoding
from restpg_dspy.training_data import tokenize_rows

if TYPE_CHECKING:
    from restpg_dspy.engine import LocalEngine

logger = logging.getLogger(__name__)

TRAINING_LOG = "training_log.json"
_STAGING = ".training-"  # + the training process id + a random suffix
_CHECKPOINTS = ".checkpoints-"  # + the job's key: the trainer checkpoints of a training that has not finished
_TRAINED = ".trained-"  # + the job's key + .json: which published adapter that job trained


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; no adapter was published."""


# Knobs that belong to the fine-tuning job itself rather than to TRL's SFTConfig or PEFT's LoraConfig.
_OWN_KNOBS = (
    "dtype",
    "output_dir",
    "start_from",
    "num_processes",
    "accelerate_config",
    "save_steps",
    "memory_budget_gib",
)
_LORA_KNOBS = ("r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass
class LoRATrainingConfig:
    """The knobs of one LoRA fine-tuning job: TRL's ``SFTConfig`` and PEFT's ``LoraConfig``, under their own names.

    The fields below are the common ones, with defaults for LoRA on small models (they differ from TRL's and PEFT's
    where those suit full fine-tuning); any other ``SFTConfig`` field (``optim``, ``adam_beta2``, ...) or
    ``LoraConfig`` field (``use_rslora``, ``layers_to_transform``, ...) passes through ``train_kwargs`` unchanged.

    Attributes:
        r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / r``).
        lora_dropout: Dropout on the LoRA input.
        target_modules: Modules that get LoRA weights: ``"all-linear"`` or a list of module names.
        learning_rate: Peak learning rate (AdamW).
        num_train_epochs: Passes over the training rows (ignored when ``max_steps`` > 0).
        max_steps: Optimizer steps to run; -1 derives them from ``num_train_epochs``.
        per_device_train_batch_size: Rows per forward pass.
        gradient_accumulation_steps: Forward passes per optimizer step.
        max_length: Longest tokenized row; longer rows are truncated and counted in the log.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (also turned on by the
            memory plan when the budget needs it).
        dtype: Training dtype, ``"auto"`` picks bfloat16 on a capable GPU and float32 otherwise.
        warmup_steps: Warm-up length: an integer number of steps, or a float in [0, 1) as a fraction of all steps.
        lr_scheduler_type: A transformers scheduler name.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm.
        seed: Seed of initialisation, dropout and data order (same data + seed = same adapter = same model id).
        logging_steps: Log the loss every this many steps.
        save_steps: Checkpoint the training (adapter, optimizer, scheduler and random states) every this many steps,
            so that the same job, run again after an interruption, resumes from its last checkpoint and publishes
            the adapter an uninterrupted run would have; 0 turns checkpoints off. Checkpoints are kept in
            ``<output_dir>/.checkpoints-<job key>`` until the job finishes.
        output_dir: Where adapters are published (default: ``<restpg home>/adapters``).
        start_from: ``"base"`` trains a fresh adapter on the base weights; ``"adapter"`` continues the adapter of
            the LM being fine-tuned; any other value is the folder of an adapter to continue.
        num_processes: Processes that train data-parallel (DDP through ``torchrun``; gloo on CPUs, one GPU each);
            the global batch is ``per_device_train_batch_size x gradient_accumulation_steps x num_processes``.
        accelerate_config: An ``accelerate`` config file (DeepSpeed, FSDP, ...): the training is launched with
            ``accelerate launch --config_file`` instead.
        memory_budget_gib: On a CPU, the most resident memory the training process may reach: gradient
            checkpointing, then micro-batches accumulated into the same optimizer steps, are used as far as the
            estimate of :func:`~restpg_dspy.memory_plan.plan_memory` needs, and a job that cannot fit is refused
            before it starts; ``None`` plans nothing (a launched multi-process job plans nothing either).
        sft_args: Further ``SFTConfig`` fields.
        lora_args: Further ``LoraConfig`` fields.
    """

    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    warmup_steps: float = 0.0
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 25
    output_dir: str | None = None
    start_from: str = "base"
    num_processes: int = 1
    accelerate_config: str | None = None
    memory_budget_gib: float | None = 8.0
    sft_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, train_kwargs: dict[str, Any] | None) -> LoRATrainingConfig:
        """Build a config from ``train_kwargs``: our fields, then ``SFTConfig`` and ``LoraConfig`` fields by name.

        Raises:
            UsageError: a key that none of them has (named), or a rank, batch size or length out of range.
        """
        from peft import LoraConfig
        from trl import SFTConfig

        train_kwargs = dict(train_kwargs or {})
        own = {f.name for f in dataclasses.fields(cls)} - {"sft_args", "lora_args"}
        sft_fields = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
        lora_fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
        unknown = sorted(set(train_kwargs) - own - sft_fields - lora_fields)
        if unknown:
            raise UsageError(
                f"unknown train_kwargs {unknown}: neither a fine-tuning knob ({sorted(own)}) nor a field of TRL's "
                "SFTConfig or PEFT's LoraConfig"
            )
        config = cls(
            **{k: v for k, v in train_kwargs.items() if k in own},
            sft_args={k: v for k, v in train_kwargs.items() if k not in own and k in sft_fields},
            lora_args={k: v for k, v in train_kwargs.items() if k not in own and k not in sft_fields},
        )
        if config.max_length < 2 or config.r < 1 or config.per_device_train_batch_size < 1 or config.num_processes < 1:
            raise UsageError("max_length must be >= 2, r, per_device_train_batch_size and num_processes >= 1")
        if config.save_steps < 0:
            raise UsageError(f"save_steps must be >= 0 (0 turns checkpoints off), not {config.save_steps}")
        if config.memory_budget_gib is not None and config.memory_budget_gib <= 0:
            raise UsageError(f"memory_budget_gib must be > 0 (or None to plan nothing), not {config.memory_budget_gib}")
        if config.accelerate_config and not Path(config.accelerate_config).is_file():
            raise UsageError(f"accelerate_config {config.accelerate_config} is not a file")
        return config

    def lora_config(self) -> Any:
        """PEFT's ``LoraConfig`` for a fresh adapter."""
        from peft import LoraConfig

        knobs = {name: getattr(self, name) for name in _LORA_KNOBS}
        return LoraConfig(task_type="CAUSAL_LM", **{**knobs, **self.lora_args})

    def sft_config(self, output_dir: Path, *, use_cpu: bool, bf16: bool, plan: dict[str, Any] | None = None) -> Any:
        """TRL's ``SFTConfig`` for this job (with ``plan``'s micro-batches and checkpointing, see
        :class:`~restpg_dspy.memory_plan.MemoryPlan`); the data arrive tokenized, with our labels and weights."""
        from trl import SFTConfig

        knobs = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in (*_OWN_KNOBS, *_LORA_KNOBS, "sft_args", "lora_args")
        }
        fixed = {
            "output_dir": str(output_dir),
            "data_seed": self.seed,
            "gradient_checkpointing_kwargs": {"use_reentrant": False} if self.gradient_checkpointing else None,
            "save_strategy": "steps" if self.save_steps else "no",
            **({"save_steps": self.save_steps, "save_total_limit": 1} if self.save_steps else {}),
            "report_to": [],
            "remove_unused_columns": False,  # keep the row weights
            "dataset_kwargs": {"skip_prepare_dataset": True},
            "use_cpu": use_cpu,
            "bf16": bf16,
            "disable_tqdm": True,  # replaced by the one-line progress bar
        }
        if plan:
            fixed["per_device_train_batch_size"] = plan["micro_batch_size"]
            fixed["gradient_accumulation_steps"] = self.gradient_accumulation_steps * plan["accumulation"]
            if plan["gradient_checkpointing"]:
                fixed["gradient_checkpointing"] = True
                fixed["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        return SFTConfig(**{**knobs, **fixed, **self.sft_args})


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
        engine: The :class:`~restpg_dspy.engine.LocalEngine` whose base model is trained and which serves adapters.
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
        path, log = train_lora(self.engine, train_data, config, start)
        job.log = log
        # The tuned model decodes as the model it was trained from did (its repetition controls, say).
        return with_decoding(self.engine.register_adapter(path), **split_decoding(model)[1])


def _collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attention[i, :n] = 1
    weights = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "weight": weights}


def assistant_token_losses(model: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any, Any]:
    """Cross-entropy of each trained token (``labels != -100``), the mask of those tokens, and the model output.

    Logits are computed only at positions whose next token is trained, for all rows of the batch at once
    (``logits_to_keep`` with the positions any row needs): the vocabulary projection and softmax of the prompt
    tokens — most of a personalization row is profile — would otherwise be a large part of each step's time and
    memory. Models whose ``forward`` has no ``logits_to_keep`` get full logits.

    Returns:
        ``(token_loss, trained, outputs)``; ``token_loss`` and ``trained`` are ``(batch, kept positions)``.
    """
    import torch

    next_trained = labels[:, 1:].ne(-100)
    if accepts_logits_to_keep(model):
        positions = next_trained.any(dim=0).nonzero().squeeze(1)
        outputs = model(**inputs, logits_to_keep=positions)
        logits = outputs.logits
    else:
        positions = torch.arange(labels.shape[1] - 1, device=labels.device)
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1, :]
    targets = labels[:, 1:][:, positions]
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    return token_loss, targets.ne(-100), outputs


@functools.cache
def _trainer_classes() -> tuple[type, type]:
    """The Trainer subclass and progress callback (defined lazily: importing transformers is slow)."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class LossProgressBar(TrainerCallback):
        """A tqdm bar over optimizer steps showing the latest loss, instead of a printed dict per log step."""

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="LoRA fine-tuning", unit="step", leave=False
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    class WeightedSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer with token-level cross-entropy on assistant tokens, each row's tokens scaled by its weight.

        The loss of a micro-batch is its weighted token losses over the trained tokens of the whole optimizer step
        (all accumulated micro-batches, on all processes), so gradient accumulation and several processes give the
        gradient of one large batch. Data-parallel training averages gradients over processes, so the loss is
        multiplied by their number, as ``Trainer.compute_loss`` does.
        """

        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True  # the Trainer then counts each step's trained tokens for us

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, weights = inputs.pop("labels"), inputs.pop("weight")
            token_loss, trained, outputs = assistant_token_losses(model, inputs, labels)
            per_row = (token_loss * trained).sum(dim=1)
            if num_items_in_batch is None:
                num_items_in_batch = trained.sum() * self.args.gradient_accumulation_steps
            loss = (per_row * weights.to(per_row.device)).sum() / max(int(num_items_in_batch), 1)
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss became {loss.item()} at step {self.state.global_step}; no adapter was "
                    "published (lower learning_rate or check the training rows)"
                )
            return (loss, outputs) if return_outputs else loss

    return WeightedSFTTrainer, LossProgressBar


def _remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders whose training process is gone (killed before its ``finally`` could clean up)."""
    for folder in root.glob(f"{_STAGING}*-*"):
        pid = folder.name.removeprefix(_STAGING).split("-", 1)[0]
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
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        batch_size=config.per_device_train_batch_size,
        longest_row=longest,
        trained_tokens=longest - min(firsts),  # logits are kept at every position some row of a batch trains
        budget_gib=config.memory_budget_gib,
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
    _check_one_gpu_per_process(loaded.device, config.num_processes)
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
    trained = _trained_before(root, key)
    if trained is not None:
        logger.info("the same training (rows, settings, base and start) published %s before; reusing it", trained[0])
        return trained
    _remove_abandoned_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{os.getpid()}-", dir=root))
    job.staging = str(staging)
    started = time.monotonic()
    claim = _claim_checkpoints(root, job, key) if config.save_steps else None
    finished = False
    try:
        if config.num_processes > 1 or config.accelerate_config:
            steps, losses, resumed_at = _fit_in_processes(job)
        else:
            steps, losses, resumed_at = fit(job, tokenizer=loaded.tokenizer)
        if losses and not all(math.isfinite(loss) for loss in losses):
            raise NonFiniteLossError("the training loss was not finite; no adapter was published")
        adapter_dir = staging / "adapter"
        digest = adapter_hash(adapter_dir)
        final = root / f"{loaded.name}-lora-{digest}"
        log = {
            "adapter": str(final),
            "base_model": str(loaded.path),
            "start_from": str(start_from) if start_from else "base",
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
        write_atomic(root / f"{_TRAINED}{key}.json", json.dumps({"adapter": final.name}))
        finished = True
        return final, log
    except NonFiniteLossError:
        finished = True  # the training is deterministic: a resumed run would meet the same loss
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if claim is not None:
            _release_checkpoints(Path(job.checkpoints), claim, keep=not finished)
        release_memory()  # the training's activations, or each M-step of a run would keep its peak resident


def _trained_before(root: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """The adapter (and its training log) that the job of ``key`` published under ``root``, if it is still there.

    A job run again (by another method of the same table, say) would compute the same weights from the same rows,
    settings, base weights and start (to the bit on a CPU), so it is served the earlier adapter instead.
    """
    record = root / f"{_TRAINED}{key}.json"
    if not record.is_file():
        return None
    adapter = root / json.loads(record.read_text())["adapter"]
    log = adapter / TRAINING_LOG
    return (adapter, json.loads(log.read_text())) if log.is_file() else None


def _claim_checkpoints(root: Path, job: TrainingJobSpec, key: str) -> Any:
    """Point ``job`` (whose key is ``key``) at its checkpoint folder under ``root`` and lock it; return the held lock.

    A second process training the same job at the same time trains without checkpoints (both would write them).
    """
    folder = root / f"{_CHECKPOINTS}{key}"
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


def _release_checkpoints(folder: Path, lock: Any, keep: bool) -> None:
    """Unlock ``folder``; delete it unless ``keep`` (an interrupted training) and it holds a checkpoint to resume."""
    if keep and any(folder.glob("checkpoint-*")):
        logger.warning("the training stopped; running the same job again resumes it from %s", folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    lock.close()


@dataclass
class TrainingJobSpec:
    """What one training run needs, in a form that can be written to a file for the processes of a launched job.

    Attributes:
        model_path: The base model's folder.
        device: ``"cpu"`` or ``"cuda..."``; a launched process on a GPU takes the one of its local rank.
        rows: Tokenized rows (``input_ids``, ``labels``, ``weight``).
        config: The job's knobs.
        start_from: An adapter folder to continue, or ``None`` for a fresh adapter.
        staging: The folder the adapter (``adapter/``) and the trainer's files are written to.
        checkpoints: The folder of the job's resumable checkpoints, or ``None`` to keep none.
        base_fingerprint: The base weights' content fingerprint, so that new weights in the same folder make another
            job (one that neither resumes the old checkpoints nor is served the old adapter).
        plan: The memory plan's micro-batches and checkpointing, when it changes how the batch is computed.
    """

    model_path: str
    device: str
    rows: list[dict[str, Any]]
    config: LoRATrainingConfig
    start_from: str | None
    staging: str
    checkpoints: str | None = None
    base_fingerprint: str | None = None
    plan: dict[str, Any] | None = None

    def key(self) -> str:
        """What the training computes, hashed: the same key resumes the same job's checkpoints."""
        identity = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("staging", "checkpoints")}
        identity["config"].pop("output_dir")  # where the adapter is published changes nothing it computes
        identity["config"].pop("memory_budget_gib")  # the plan it leads to is what counts
        if identity["plan"] is None:
            identity.pop("plan")
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: Path) -> TrainingJobSpec:
        fields = json.loads(path.read_text())
        return cls(**{**fields, "config": LoRATrainingConfig(**fields["config"])})


def fit(job: TrainingJobSpec, tokenizer: Any = None) -> tuple[int, list[float], int]:
    """Train the adapter of ``job`` (in this process, which may be one rank of a launched job) and save it to
    ``<staging>/adapter`` from the main process; a checkpoint of the same job in ``job.checkpoints`` is resumed.
    Returns the optimizer steps, the logged losses and the step the training resumed at (0 for a fresh start)."""
    import torch
    from accelerate.utils import parse_flag_from_env
    from datasets import Dataset
    from peft import PeftModel, get_peft_model
    from transformers import PrinterCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from restpg_dspy.models import load_tokenizer

    config, staging = job.config, Path(job.staging)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(Path(job.model_path))
    set_seed(config.seed)
    device = job.device
    if parse_flag_from_env("ACCELERATE_USE_CPU"):  # launched by an accelerate config that trains on the CPU
        device = "cpu"
    elif device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    dtype = resolve_dtype(config.dtype, device)
    # A private copy of the base weights: LoRA layers are injected in place, and the served copy must not change.
    model = load_causal_lm(Path(job.model_path), dtype, device)
    if job.start_from is not None:
        model = PeftModel.from_pretrained(model, job.start_from, is_trainable=True)
    else:
        model = get_peft_model(model, config.lora_config())
    checkpoints = Path(job.checkpoints) if job.checkpoints else None
    arguments = config.sft_config(
        checkpoints or staging / "trainer",
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16 and device != "cpu",
        plan=job.plan,
    )
    trainer_class, progress_bar = _trainer_classes()
    trainer = trainer_class(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(job.rows),
        processing_class=tokenizer,
        data_collator=lambda batch: _collate(batch, tokenizer.pad_token_id),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_bar())
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints else None  # the folder exists once claimed
    resumed_at = int(Path(resume).name.rsplit("-", 1)[1]) if resume else 0
    trainer.train(resume_from_checkpoint=resume)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        model.save_pretrained(staging / "adapter")
        fitted = {"steps": trainer.state.global_step, "losses": losses, "resumed_at_step": resumed_at}
        (staging / "fit.json").write_text(json.dumps(fitted))
    return trainer.state.global_step, losses, resumed_at


def _check_one_gpu_per_process(device: str, num_processes: int) -> None:
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


def _fit_in_processes(job: TrainingJobSpec) -> tuple[int, list[float], int]:
    """Run :func:`fit` in ``num_processes`` launched processes; their output goes to ``<staging>/launch.log``."""
    import subprocess
    import sys

    config, staging = job.config, Path(job.staging)
    spec = staging / "job.json"
    job.save(spec)
    worker = ["-m", "restpg_dspy.finetune", str(spec)]
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


if __name__ == "__main__":  # one process of a launched multi-process training
    import sys

    fit(TrainingJobSpec.load(Path(sys.argv[1])))
