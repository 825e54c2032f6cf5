"""How a LoRA training fits a memory budget on a CPU: gradient checkpointing, then micro-batches.

A forward pass keeps, for every token of every layer, the activations its backward pass needs: about ``16 h + 5 i``
numbers for a Llama-style layer (``h`` hidden size, ``i`` MLP size; norms, projections, LoRA dropout copies, the MLP's
four intermediate tensors). For SmolLM2-135M that is 2 MB per token in float32, so 8 rows of 1,024 tokens take 17 GB
before the logits: the run that the out-of-memory killer stopped at 24 GB. A bfloat16 training keeps most of them in
two bytes (``benchmarks/training_memory.py --vary checkpointing`` measures the peaks beside the estimate).
:func:`plan_memory` picks, in this order, what brings a training under its budget without changing what it computes:

1. nothing, if the whole batch fits;
2. gradient checkpointing (each layer keeps its input only and recomputes the rest in the backward pass, with the
   same random state: the same gradients);
3. micro-batches of fewer rows, accumulated into the same optimizer step (the loss of each is normalised by the
   trained tokens of the whole step, so the gradient is the full batch's, up to float rounding; dropout masks are
   drawn per micro-batch, so with ``lora_dropout`` > 0 they differ from one large batch's);

and refuses, before any training, a job that does not fit even one row at a time, naming what to change.

The
estimate counts the process (its libraries and the served copy of the base weights), a private training copy of the
weights, the optimizer's state, the activations of the longest rows and their logits at trained positions. It
depends on the rows, the settings and the model only, never on the state of the process, so the same job always
trains the same way (and gives the same adapter).

Example:
    >>> from types import SimpleNamespace
    >>> smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    >>> plan = plan_memory(smol, parameters=135e6, batch_size=8, longest_row=1024, trained_tokens=300, budget_gib=8.0)
    >>> plan.micro_batch_size, plan.gradient_checkpointing
    (8, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from restpg_dspy.errors import UsageError

GIB = 2**30
PROCESS_GIB = 1.5  # the interpreter and its libraries (torch, transformers, DSPy), measured at about 1.2 GiB
FLOAT_BYTES = 4  # logits, and every number of a float32 training
HALF_ACTIVATION_BYTES = 2  # per kept number of a half-precision training
LOGIT_COPIES = 3  # the logits, their float32 softmax and its gradient


@dataclass(frozen=True)
class MemoryPlan:
    """How a training runs within its budget.

    Attributes:
        micro_batch_size: Rows per forward pass.
        accumulation: Forward passes accumulated per optimizer step for each step the batch would have taken alone.
        gradient_checkpointing: Whether layers recompute their activations in the backward pass.
        estimated_gib: The estimated peak resident memory of the process while it trains.
    """

    micro_batch_size: int
    accumulation: int
    gradient_checkpointing: bool
    estimated_gib: float


def estimate_gib(
    model_config: Any,
    *,
    parameters: float,
    rows: int,
    longest_row: int,
    trained_tokens: int,
    checkpointing: bool,
    dtype: str = "float32",
) -> float:
    """Estimated peak resident GiB of a process that serves a model and trains ``rows`` rows of it per pass.

    Args:
        model_config: The model's ``transformers`` config (hidden, MLP and vocabulary sizes, layers).
        parameters: Parameters of the base model (its private training copy is counted).
        rows: Rows per forward pass.
        longest_row: Tokens of the longest row (rows are padded to it).
        trained_tokens: Trained (assistant) tokens of the row that has most: logits are computed there only.
        checkpointing: Gradient checkpointing on.
        dtype: The dtype of the base weights while training (``"auto"`` is float32 on a CPU): a half-precision
            training keeps its private copy of the weights, and most of its activations, in two bytes a number.
    """
    hidden, mlp = model_config.hidden_size, model_config.intermediate_size
    layers, vocab = model_config.num_hidden_layers, model_config.vocab_size
    per_layer = 16 * hidden + 5 * mlp  # numbers kept per token and layer for the backward pass
    tokens = rows * longest_row
    # With checkpointing each layer keeps its input, and one layer at a time recomputes the rest.
    activations = tokens * (layers * hidden + per_layer if checkpointing else layers * per_layer)
    logits = rows * trained_tokens * vocab * LOGIT_COPIES
    half = dtype in ("bfloat16", "float16")
    # The served copy (float32), the private training copy, and LoRA weights with their optimizer state.
    weights = parameters * (FLOAT_BYTES * 1.1 + (2 if half else FLOAT_BYTES))
    activation_bytes = HALF_ACTIVATION_BYTES if half else FLOAT_BYTES
    return PROCESS_GIB + (weights + activations * activation_bytes + logits * FLOAT_BYTES) / GIB


def plan_memory(
    model_config: Any,
    *,
    parameters: float,
    batch_size: int,
    longest_row: int,
    trained_tokens: int,
    budget_gib: float,
    dtype: str = "float32",
) -> MemoryPlan:
    """The cheapest way (see the module docs) to train ``batch_size`` rows per step within ``budget_gib``.

    Raises:
        UsageError: not even one row at a time with checkpointing fits, naming the settings that would.
    """

    def estimate(rows: int, checkpointing: bool) -> float:
        return estimate_gib(
            model_config,
            parameters=parameters,
            rows=rows,
            longest_row=longest_row,
            trained_tokens=trained_tokens,
            checkpointing=checkpointing,
            dtype=dtype,
        )

    if estimate(batch_size, False) <= budget_gib:
        return MemoryPlan(batch_size, 1, False, round(estimate(batch_size, False), 2))
    for rows in (r for r in range(batch_size, 0, -1) if batch_size % r == 0):
        if estimate(rows, True) <= budget_gib:
            return MemoryPlan(rows, batch_size // rows, True, round(estimate(rows, True), 2))
    need = estimate(1, True)
    raise UsageError(
        f"this training needs about {need:.1f} GiB even one row at a time with gradient checkpointing (rows of up to "
        f"{longest_row} tokens), over memory_budget_gib={budget_gib:g}: lower max_length, or raise "
        "memory_budget_gib if the machine has the memory"
    )
