"""Routing each call of a program to the personal adapter of the user it serves.

:class:`PersonalRouter` wraps a program whose predictors run on a shared fine-tuned LM. For a call with a
``user_id`` that has a personal adapter, the routed predictors (those the adapters were trained for, usually the
generation step) run on that adapter, served by the shared LM's engine beside every other user's; the other
predictors, and users without an adapter, stay on the shared LM. Each prediction says what served it.

Example:
    >>> from restpg_dspy.programs import PersonalizedWriter, PersonalRouter
    >>> router = PersonalRouter(PersonalizedWriter(), {"alice": "adapters/alice"}, routed=["write"])
    >>> router.users()
    ['alice']
    >>> prediction = router(request="Write my news.", profile=[], user_id="alice")  # doctest: +SKIP
    >>> prediction.personal, prediction.served_by  # doctest: +SKIP
    (True, 'local/SmolLM2-135M-Instruct-3f9a2c1e+lora-5e6f7a8b9c0d')
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.optimizers.traces import predictor_lms, without_lms
from restpg_dspy.serving import serving_engine, split_decoding, with_decoding
from restpg_dspy.serving.model_ids import adapter_hash

ROUTING_STATE = "personal_adapters"


class PersonalRouter(dspy.Module):
    """A program whose routed predictors run on the calling user's personal adapter.

    Args:
        program: The shared program; its predictors' LM (or the configured LM) is the shared model, served by a
            local or vLLM engine.
        adapters: User id → folder of the user's adapter for the shared model's base weights.
        routed: Names of the predictors that run on a personal adapter (the step the adapters were trained for).

    Raises:
        UsageError: a routed name that is not a predictor of ``program``.

    Predictions carry the program's fields plus ``personal`` (whether a personal adapter served the call) and
    ``served_by`` (the model id of the routed predictors' LM).
    """

    def __init__(self, program: dspy.Module, adapters: dict[str, str | Path], routed: list[str] | tuple[str, ...]):
        super().__init__()
        self.program = program
        self.adapters = {str(user): str(folder) for user, folder in adapters.items()}
        self.routed = tuple(routed)
        unknown = sorted(set(self.routed) - {name for name, _ in program.named_predictors()})
        if unknown or not self.routed:
            raise UsageError(
                f"routed predictors {unknown or '[]'} are not predictors of {type(program).__name__} "
                f"({[name for name, _ in program.named_predictors()]})"
            )
        self._served: dict[tuple[int, str], str] = {}  # (engine, folder) -> the model id it serves the folder under
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()

    def users(self) -> list[str]:
        """The users that have a personal adapter."""
        return sorted(self.adapters)

    def forward(self, user_id: str | None = None, **inputs: Any) -> dspy.Prediction:
        folder = self.adapters.get(str(user_id)) if user_id is not None else None
        lms = predictor_lms(self.program)
        if folder is None:
            prediction = self.program(**inputs)
            served_by = lms[self.routed[0]].model
        else:
            personal = {name: self._on_adapter(lms[name], folder) for name in self.routed}
            program = without_lms(self.program)  # a fresh copy: its predictors can take this call's LMs
            for name, predictor in program.named_predictors():
                predictor.lm = personal.get(name) or lms[name]
            prediction = program(**inputs)
            served_by = personal[self.routed[0]].model
        prediction.personal = folder is not None
        prediction.served_by = served_by
        return prediction

    def _on_adapter(self, lm: dspy.LM, folder: str) -> dspy.LM:
        """A copy of ``lm`` that serves ``folder``'s adapter (on ``lm``'s engine, decoding as ``lm`` does)."""
        engine = serving_engine(lm)
        if engine is None:
            raise UsageError(
                f"personal adapters need an LM served by a local or vLLM engine; {lm.model!r} is not (use "
                "restpg_dspy.lm('local') or a vllm backend)"
            )
        key = (id(engine), folder)
        with self._lock:
            if key not in self._served:
                self._served[key] = engine.register_adapter(folder)
        routed = lm.copy(model=with_decoding(self._served[key], **split_decoding(lm.model)[1]))
        routed.history = lm.history  # the caller reads how this call's generations finished from its LM's history
        return routed

    def describe(self) -> dict[str, Any]:
        """The program's settings and the routing (each user's adapter by content), for cache fingerprints."""
        with self._lock:
            for folder in self.adapters.values():
                if folder not in self._hashes:
                    self._hashes[folder] = adapter_hash(Path(folder))
        settings = self.program.describe() if hasattr(self.program, "describe") else {}
        routing = {"routed": list(self.routed), "adapters": {u: self._hashes[f] for u, f in self.adapters.items()}}
        return {**settings, "router": type(self).__name__, ROUTING_STATE: routing}

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        routing = {"adapters": self.adapters, "routed": list(self.routed)}
        return {**super().dump_state(json_mode=json_mode), ROUTING_STATE: routing}

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> None:
        routing = state.get(ROUTING_STATE)
        super().load_state({k: v for k, v in state.items() if k != ROUTING_STATE}, **kwargs)
        if routing is not None:
            self.adapters = {str(user): str(folder) for user, folder in routing["adapters"].items()}
            self.routed = tuple(routing["routed"])

    def __deepcopy__(self, memo: dict) -> PersonalRouter:
        copy = PersonalRouter(self.program.deepcopy(), self.adapters, self.routed)
        copy._served, copy._hashes = self._served, self._hashes  # registrations hold for every copy
        return copy
