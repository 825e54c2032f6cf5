"""Chat rows to token ids with a loss mask on the assistant turns only, rendered by the model's chat template.

Rows are in DSPy's chat fine-tuning format: ``{"messages": [{"role": ..., "content": ...}, ...]}`` with an
optional ``"weight"`` (reward weight, default 1.0). The same chat template renders prompts at inference time,
so training and serving see identical text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from restpg_dspy.errors import UsageError


class TrainingDataError(UsageError):
    """A training row that cannot be used; the message names the row index and what is wrong."""


@dataclass
class TokenizedRow:
    """One training sequence.

    Attributes:
        input_ids: Token ids of the whole conversation (possibly truncated).
        labels: ``input_ids`` where assistant tokens are trained, ``-100`` elsewhere.
        weight: The row's loss weight.
    """

    input_ids: list[int]
    labels: list[int]
    weight: float


@dataclass
class TokenizationStats:
    """What happened to the rows on their way to the trainer (written to the job's log)."""

    rows: int = 0
    truncated: int = 0
    dropped_after_truncation: list[int] = field(default_factory=list)
    assistant_tokens: int = 0
    total_tokens: int = 0


def validate_rows(rows: list[dict[str, Any]]) -> None:
    """Check every row before any model is loaded.

    Raises:
        TrainingDataError: no rows, or a row without messages, without an assistant turn, with a malformed
            message or a weight that is negative or not finite (the message names the row index).
    """
    if not rows:
        raise TrainingDataError("no training rows: fine-tuning needs at least one chat row")
    for index, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise TrainingDataError(f"training row {index}: expected a non-empty 'messages' list")
        for turn, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise TrainingDataError(f"training row {index}, message {turn}: needs 'role' and string 'content'")
            if message.get("role") not in ("system", "user", "assistant"):
                raise TrainingDataError(f"training row {index}, message {turn}: unknown role {message.get('role')!r}")
        if not any(m["role"] == "assistant" for m in messages):
            raise TrainingDataError(f"training row {index}: has no assistant turn, so there is nothing to learn")
        weight = row.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise TrainingDataError(f"training row {index}: weight must be a finite number >= 0, got {weight!r}")


def tokenize_rows(
    tokenizer: Any, rows: list[dict[str, Any]], max_length: int
) -> tuple[list[TokenizedRow], TokenizationStats]:
    """Render and tokenize chat rows, masking everything but assistant turns; truncate to ``max_length``.

    Rows cut so short that no assistant token remains are dropped and listed in the stats.
    """
    validate_rows(rows)
    stats = TokenizationStats(rows=len(rows))
    tokenized = []
    for index, row in enumerate(rows):
        messages = row["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
            through = tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
            if not text.startswith(through) or not through.startswith(prefix):
                raise TrainingDataError(
                    f"training row {index}: the chat template does not render turn {turn} as a prefix of the "
                    "conversation, so assistant tokens cannot be located"
                )
            spans.append((len(prefix), len(through)))
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = encoding["input_ids"]
        labels = [
            token if any(start <= begin < end for start, end in spans) else -100
            for token, (begin, _) in zip(input_ids, encoding["offset_mapping"], strict=True)
        ]
        if len(input_ids) > max_length:
            stats.truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        trained = sum(label != -100 for label in labels)
        if trained == 0:
            stats.dropped_after_truncation.append(index)
            continue
        stats.assistant_tokens += trained
        stats.total_tokens += len(input_ids)
        tokenized.append(TokenizedRow(input_ids, labels, float(row.get("weight", 1.0))))
    if not tokenized:
        raise TrainingDataError(
            f"every training row lost all its assistant tokens to truncation at max_length={max_length}; "
            "raise max_length"
        )
    return tokenized, stats
