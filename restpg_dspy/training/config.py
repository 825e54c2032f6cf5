"""The knobs of a LoRA fine-tune: :class:`LoRATrainingConfig`, built from DSPy's ``train_kwargs``.

Example:
    >>> from restpg_dspy.training import LoRATrainingConfig
    >>> config = LoRATrainingConfig.from_kwargs({"num_train_epochs": 2, "lora_dropout": 0.0})  # doctest: +SKIP
    >>> config.num_train_epochs, config.lora_args  # doctest: +SKIP
    (2, {'lora_dropout': 0.0})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError

# Knobs that belong to the fine-tuning job itself rather than to TRL's SFTConfig or PEFT's LoraConfig.
_OWN_KNOBS = (
    "dtype",
    "output_dir",
    "start_from",
    "stack_on",
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
        lora_dropout: Dropout on the LoRA input (its masks are about a quarter of a CPU step's time:
            ``benchmarks/lora_step.py --vary dropout``; 0 is PEFT's default).
        target_modules: Modules that get LoRA weights: ``"all-linear"`` or a list of module names.
        learning_rate: Peak learning rate (AdamW).
        num_train_epochs: Passes over the training rows (ignored when ``max_steps`` > 0).
        max_steps: Optimizer steps to run; -1 derives them from ``num_train_epochs``.
        per_device_train_batch_size: Rows per forward pass.
        gradient_accumulation_steps: Forward passes per optimizer step.
        max_length: Longest tokenized row; longer rows are truncated and counted in the log.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (also turned on by the
            memory plan when the budget needs it).
        dtype: The dtype of the frozen base weights while training: ``"auto"`` picks bfloat16 on a capable GPU
            and float32 otherwise. ``"bfloat16"`` on a CPU with native bfloat16 (AMX or AVX512-BF16) trains faster
            (``benchmarks/lora_step.py --vary dtype``); the LoRA weights and their optimizer state stay float32
            while the LoRA layers compute in bfloat16 under autocast (``--vary autocast``), and the adapter is served
            on the float32 base weights.
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
        stack_on: Train a fresh adapter (of rank ``r``) over another one, which is merged into the frozen weights
            while training: ``"adapter"`` stacks on the adapter of the LM being fine-tuned, any other value is an
            adapter folder. The published adapter is the two combined into one of their summed rank (see
            :func:`~restpg_dspy.training.stacking.stack_adapters`), so any engine serves it on the base weights.
            ``None``: no stacking.
        num_processes: Processes that train data-parallel (DDP through ``torchrun``; gloo on CPUs, one GPU each);
            the global batch is ``per_device_train_batch_size x gradient_accumulation_steps x num_processes``.
        accelerate_config: An ``accelerate`` config file (DeepSpeed, FSDP, ...): the training is launched with
            ``accelerate launch --config_file`` instead.
        memory_budget_gib: On a CPU, the most resident memory the training process may reach: gradient
            checkpointing, then micro-batches accumulated into the same optimizer steps, are used as far as the
            estimate of :func:`~restpg_dspy.training.memory_plan.plan_memory` needs, and a job that cannot fit is
            refused before it starts; ``None`` plans nothing (a launched multi-process job plans nothing either).
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
    stack_on: str | None = None
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
        if config.stack_on is not None and config.start_from != "base":
            raise UsageError(
                f"stack_on trains a fresh adapter over another; it cannot also continue one (start_from="
                f"{config.start_from!r})"
            )
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
        :class:`~restpg_dspy.training.memory_plan.MemoryPlan`); the data arrive tokenized, with our labels and
        weights."""
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
