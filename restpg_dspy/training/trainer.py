"""One training process: TRL's ``SFTTrainer`` with a loss on assistant tokens only, weighted per row, over PEFT's
LoRA layers; :func:`fit` trains the adapter of a :class:`TrainingJobSpec` (and runs as each process of a launched
multi-process training)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restpg_dspy.serving.model_ids import adapter_hash
from restpg_dspy.serving.models import accepts_logits_to_keep, load_causal_lm, resolve_dtype
from restpg_dspy.training.config import LoRATrainingConfig

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; no adapter was published."""


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
def trainer_classes() -> tuple[type, type]:
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
        import torch

        identity = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("staging", "checkpoints")}
        identity["config"].pop("output_dir")  # where the adapter is published changes nothing it computes
        identity["config"].pop("memory_budget_gib")  # the plan it leads to is what counts
        if self.config.stack_on is not None:  # the adapter below counts by its content, wherever it is kept
            identity["config"]["stack_on"] = adapter_hash(Path(self.config.stack_on))
        if resolve_dtype(self.config.dtype, self.device) == torch.bfloat16:  # the LoRA layers compute in it
            identity["lora_compute_dtype"] = "bfloat16"
        if identity["plan"] is None:
            identity.pop("plan")
        else:  # how the batch is computed counts, not the estimate that chose it
            identity["plan"].pop("estimated_gib", None)
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: Path) -> TrainingJobSpec:
        fields = json.loads(path.read_text())
        return cls(**{**fields, "config": LoRATrainingConfig(**fields["config"])})


def _native_cpu_bfloat16() -> bool:
    import torch

    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fit(job: TrainingJobSpec, tokenizer: Any = None) -> tuple[int, list[float], int]:
    """Train the adapter of ``job`` (in this process, which may be one rank of a launched job) and save it to
    ``<staging>/adapter`` from the main process; a checkpoint of the same job in ``job.checkpoints`` is resumed.
    Returns the optimizer steps, the logged losses and the step the training resumed at (0 for a fresh start)."""
    import torch
    from accelerate.utils import parse_flag_from_env
    from datasets import Dataset
    from peft import PeftModel, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import PrinterCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from restpg_dspy.serving.models import load_tokenizer

    config, staging = job.config, Path(job.staging)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(Path(job.model_path))
    set_seed(config.seed)
    device = job.device
    if parse_flag_from_env("ACCELERATE_USE_CPU"):  # launched by an accelerate config that trains on the CPU
        device = "cpu"
    elif device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    dtype = resolve_dtype(config.dtype, device)
    if device == "cpu" and dtype == torch.bfloat16 and not _native_cpu_bfloat16():
        logger.warning("dtype='bfloat16': this CPU has no native bfloat16 (AMX or AVX512-BF16); float32 trains faster")
    # A private copy of the base weights: LoRA layers are injected in place, and the served copy must not change.
    model = load_causal_lm(Path(job.model_path), dtype, device)
    if config.stack_on is not None:  # the adapter trained over becomes part of the frozen weights
        model = PeftModel.from_pretrained(model, config.stack_on).merge_and_unload()
    if job.start_from is not None:
        model = PeftModel.from_pretrained(model, job.start_from, is_trainable=True)
    else:
        model = get_peft_model(model, config.lora_config())
    checkpoints = Path(job.checkpoints) if job.checkpoints else None
    # bfloat16 base weights train under bfloat16 autocast, on a CPU too: the LoRA layers then compute in bfloat16
    # (their weights and optimizer state stay float32) instead of casting every activation to float32 and back,
    # which took a quarter of a CPU training step (benchmarks/lora_step.py --vary autocast).
    mixed = dtype == torch.bfloat16
    arguments = config.sft_config(
        checkpoints or staging / "trainer", use_cpu=device == "cpu", bf16=mixed, plan=job.plan
    )
    trainer_class, progress_bar = trainer_classes()
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
    with disable_input_dtype_casting(model, active=mixed):
        trainer.train(resume_from_checkpoint=resume)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        model.save_pretrained(staging / "adapter")
        fitted = {"steps": trainer.state.global_step, "losses": losses, "resumed_at_step": resumed_at}
        (staging / "fit.json").write_text(json.dumps(fitted))
    return trainer.state.global_step, losses, resumed_at


if __name__ == "__main__":  # one process of a launched multi-process training
    import sys

    fit(TrainingJobSpec.load(Path(sys.argv[1])))
