"""The seam between restpg-dspy and an engine that serves a base model and its LoRA adapters to ``dspy.LM``.

Programs count prompts in the served model's tokens, and the optimizer registers each adapter it trains (or finds in
a run directory) and samples with the returned model id. They ask only for what :class:`AdapterServing` names, so the
local engine and other engines are equals.

Example:
    >>> import dspy
    >>> from restpg_dspy.serving import serving_engine
    >>> serving_engine(dspy.LM("openai/gpt-4o-mini")) is None  # an API model serves no adapters
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AdapterServing(Protocol):
    """An engine serving a base model and LoRA adapters on it, each under a model id naming its weights.

    Attributes:
        base_id: Model id of the base weights.
        tokenizer: The served model's tokenizer (prompts are budgeted in its tokens).
        context_length: The most tokens a prompt and its completion may hold together.
    """

    @property
    def base_id(self) -> str: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def context_length(self) -> int: ...

    def register_adapter(self, path: str | Path) -> str:
        """Make the adapter saved at ``path`` servable; return its model id (base id + adapter content hash)."""
        ...

    def adapter_path(self, model_id: str) -> Path | None:
        """The adapter folder behind ``model_id`` (``None`` for the base weights)."""
        ...


def serving_engine(lm: Any) -> AdapterServing | None:
    """The adapter-serving engine behind a ``dspy.LM``, or ``None`` for an API model."""
    engine = getattr(lm, "engine", None)
    return engine if isinstance(engine, AdapterServing) else None
