"""What restpg-dspy asks of an engine that serves a base model and its LoRA adapters: :class:`AdapterServing`.

Example:
    >>> import dspy
    >>> from restpg_dspy.serving import serving_engine
    >>> serving_engine(dspy.LM("openai/gpt-4o-mini")) is None  # an API model serves no adapters
    True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AdapterServing(Protocol):
    """An engine serving a base model and LoRA adapters on it, each under a model id naming its weights.

    Attributes:
        base_id: Model id of the base weights, ``<engine>/<weights_id>``: two engines give different ids (their
            samples for one seed differ), so DSPy's cache never hands one engine's sample to the other; the local
            engine adds ``@<dtype>`` where its weights compute in another dtype than float32, for the same reason.
        weights_id: The base weights alone (name and content fingerprint), equal across engines.
        tokenizer: The served model's tokenizer (prompts are budgeted in its tokens).
        context_length: The most tokens a prompt and its completion may hold together.
    """

    @property
    def base_id(self) -> str: ...

    @property
    def weights_id(self) -> str: ...

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

    def defer_adapter(self, model_id: str, build: Callable[[], str | Path]) -> None:
        """Serve ``model_id`` from the adapter ``build`` saves, made on the first request that needs its weights."""
        ...

    def is_deferred(self, model_id: str) -> bool:
        """Whether ``model_id`` waits for the ``build`` given to :meth:`defer_adapter`."""
        ...

    def served_name(self, model_id: str) -> str | None:
        """The name the engine serves ``model_id``'s adapter under (``None`` for the base weights)."""
        ...

    def unload_adapter(self, model_id: str) -> None:
        """Free what serving ``model_id``'s adapter holds; registering it again serves it anew."""
        ...


def serving_engine(lm: Any) -> AdapterServing | None:
    """The adapter-serving engine behind a ``dspy.LM``, or ``None`` for an API model."""
    engine = getattr(lm, "engine", None)
    return engine if isinstance(engine, AdapterServing) else None
