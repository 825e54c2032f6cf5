"""What the engines share: DSPy's engine interface, the adapter registry and a worker thread that decodes the
queued requests (:class:`QueuedEngine`)."""

from __future__ import annotations

import inspect
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dspy.lm15 import (
    ContextLengthError,
    Message,
    Response,
    TextPart,
    TokenLogprob,
    TopLogprob,
    UnsupportedFeatureError,
    UnsupportedModelError,
    Usage,
    response_to_events,
)

from restpg_dspy.serving.model_ids import ADAPTER_TAG, adapter_hash, default_adapter_root, split_decoding
from restpg_dspy.serving.sampling import Completion, SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One queued completion: which weights, the chat-formatted prompt's token ids, how to decode it."""

    model_id: str
    prompt_ids: list[int]
    params: SamplingParams
    future: Future


_SHARED: dict[tuple, QueuedEngine] = {}
_SHARED_LOCK = threading.Lock()


def numerics_mark(dtype: Any) -> str:
    """The model id's mark of the dtype that weights compute in: ``""`` for float32, else ``"@<dtype>"``."""
    name = str(dtype).removeprefix("torch.")
    return "" if name == "float32" else f"@{name}"


class QueuedEngine:
    """DSPy's engine interface over a worker thread that decodes queued :class:`Job` s; engines subclass it.

    DSPy 3.4 calls ``complete(request)`` once per candidate, from whichever thread runs the program; each call queues a
    job and waits for its :class:`~restpg_dspy.serving.generation.Completion`. Subclasses say what the base weights are
    (``_base_prefix``, ``weights_id``, ``tokenizer``, ``context_length``) and decode jobs in ``_serve``. Adapters are
    registered by content hash; a subclass may load them eagerly in ``_load_adapter``.

    Args:
        default_max_tokens: Token budget when a request sets none.
    """

    _base_prefix = "engine"
    _worker_name = "restpg-engine"

    def __init__(self, *, default_max_tokens: int):
        self.default_max_tokens = default_max_tokens
        self.adapters: dict[str, Path] = {}
        self._deferred: dict[str, Callable[[], str | Path]] = {}
        # Reentrant: building one adapter may need another (a training that starts from an earlier adapter).
        self._deferred_lock = threading.RLock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._tokenize_lock = threading.Lock()

    @classmethod
    def setting_defaults(cls) -> dict[str, Any]:
        """The engine's settings (its keyword-only arguments) and their defaults."""
        return {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY}

    @classmethod
    def shared(cls, source: str = "local", /, **settings: Any) -> QueuedEngine:
        """Return the process-wide engine of this class for ``source`` (a model, a server) and these settings,
        creating it on first use."""
        options = cls.setting_defaults()
        unknown = sorted(set(settings) - set(options))
        if unknown:
            raise TypeError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(options)}")
        key = (cls, source, json.dumps({**options, **settings}, sort_keys=True, default=str))
        with _SHARED_LOCK:
            engine = _SHARED.get(key)
        if engine is None:
            engine = cls(source, **settings)
            with _SHARED_LOCK:
                engine = _SHARED.setdefault(key, engine)
        return engine

    def __deepcopy__(self, memo: dict) -> QueuedEngine:
        # An engine is a shared service (loaded weights, a worker thread): program copies share it.
        return self

    @property
    def weights_id(self) -> str:
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def base_id(self) -> str:
        """Model id of the base weights, e.g. ``local/SmolLM2-135M-Instruct-1a2b3c4d`` (with ``@<dtype>`` where the
        engine computes in a dtype other than float32, which gives other outputs)."""
        return f"{self._base_prefix}/{self.weights_id}{self._numerics}"

    @property
    def _numerics(self) -> str:
        """:func:`numerics_mark` of the dtype the weights compute in (subclasses that know it say so)."""
        return ""

    def register_adapter(self, path: str | Path) -> str:
        """Make a saved LoRA adapter servable and return its model id (base id + adapter content hash)."""
        path = Path(path).resolve()
        model_id = f"{self.base_id}{ADAPTER_TAG}{adapter_hash(path)}"
        if self.adapters.get(model_id) != path:
            self._load_adapter(model_id, path)
            self.adapters[model_id] = path
        return model_id

    def adapter_path(self, model_id: str) -> Path | None:
        """The adapter folder behind ``model_id`` (``None`` for the base weights).

        Ids not registered in this process are looked up in the default adapter folder, so a model id
        saved earlier resolves in a new process.

        Raises:
            UnsupportedModelError: the id names other base weights or an adapter that cannot be found.
        """
        model_id = split_decoding(model_id)[0]
        if model_id == self.base_id:
            return None
        if model_id in self.adapters:
            return self.adapters[model_id]
        if model_id in self._deferred:
            return self._build_deferred(model_id)
        base, tag, digest = model_id.partition(ADAPTER_TAG)
        if base == self.base_id and tag:
            for candidate in default_adapter_root().glob(f"*{digest}"):
                if candidate.is_dir() and adapter_hash(candidate) == digest:
                    self.register_adapter(candidate)
                    return candidate
            raise UnsupportedModelError(
                f"adapter {digest} of {base} is not registered and not in {default_adapter_root()}; "
                "call engine.register_adapter(path)"
            )
        raise UnsupportedModelError(f"model {model_id!r} is not served by this engine (base {self.base_id})")

    def defer_adapter(self, model_id: str, build: Callable[[], str | Path]) -> None:
        """Serve ``model_id`` from the adapter that ``build()`` saves (returning its folder), made on first use.

        An adapter that costs a training to make again (a run directory moved to a machine without its adapters)
        is then made only if a request needs its weights: answers served from a cache never call ``build``.

        Raises:
            UnsupportedModelError: on first use, if ``build`` saved an adapter with other weights than ``model_id``
                names.
        """
        model_id = split_decoding(model_id)[0]
        with self._deferred_lock:
            registered = self.adapters.get(model_id)
            if registered is None or not registered.is_dir():  # not here, or deleted since it was registered
                self.adapters.pop(model_id, None)
                self._deferred[model_id] = build

    def is_deferred(self, model_id: str) -> bool:
        """Whether ``model_id`` waits for :meth:`defer_adapter`'s ``build`` to make its adapter."""
        return split_decoding(model_id)[0] in self._deferred

    def _build_deferred(self, model_id: str) -> Path:
        with self._deferred_lock:  # one thread builds; the others wait for its adapter
            if model_id in self.adapters:
                return self.adapters[model_id]
            path = Path(self._deferred[model_id]()).resolve()
            built = self.register_adapter(path)
            # A run written by an earlier version records the hash that covered the base model's path too.
            if (
                model_id != built
                and model_id != f"{self.base_id}{ADAPTER_TAG}{adapter_hash(path, with_base_path=True)}"
            ):
                raise UnsupportedModelError(
                    f"the adapter made again for {model_id} at {path} has other weights ({built}): the training "
                    "that made it is not reproducible here, so its recorded results cannot be served from it"
                )
            if model_id not in self.adapters:  # served under the recorded id, which requests carry
                self._load_adapter(model_id, path)
                self.adapters[model_id] = path
            del self._deferred[model_id]
            return path

    def served_name(self, model_id: str) -> str | None:
        """The name the engine serves ``model_id``'s adapter under (``None`` for the base weights)."""
        weights = split_decoding(model_id)[0]
        return None if self.adapter_path(weights) is None else f"lora_{weights.partition(ADAPTER_TAG)[2]}"

    def unload_adapter(self, model_id: str) -> None:
        """Forget ``model_id``'s adapter; a later request for it loads it again."""
        self.adapters.pop(split_decoding(model_id)[0], None)

    def _load_adapter(self, model_id: str, path: Path) -> None:
        """Hook run when an adapter is registered (or moved); raise to refuse it before any request uses it."""

    # --- saved state (DSPy saves an LM's engine with the program) -------------------------------------------

    _source_key = "model"

    @property
    def _source(self) -> str:
        """What ``shared()`` builds this engine from (a model, a server URL), under ``_source_key`` in saved state."""
        raise NotImplementedError

    def dump_state(self) -> dict[str, Any]:
        """JSON state that :meth:`load_state` turns back into an engine serving the same weights.

        Subclasses keep ``self.settings``: their settings as given, JSON values, never credentials. An adapter
        whose folder was deleted since it was registered is left out: no other process could load it.
        """
        adapters = {model_id: str(path) for model_id, path in self.adapters.items() if path.is_dir()}
        return {self._source_key: self._source, **self.settings, "adapters": adapters}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> QueuedEngine:
        """Rebuild (or reuse) the engine described by :meth:`dump_state`, with its adapters registered.

        The state lists every adapter the saving process had registered, most of them other programs'; one whose
        folder is gone is skipped with a warning, and a request for it is refused with its id.
        """
        settings = {k: v for k, v in state.items() if k not in (cls._source_key, "adapters")}
        engine = cls.shared(state[cls._source_key], **settings)
        for model_id, path in state.get("adapters", {}).items():
            if Path(path).is_dir():
                engine.register_adapter(path)
            else:
                logger.warning("adapter %s of the saved engine is not registered: %s no longer exists", model_id, path)
        return engine

    # --- DSPy engine interface -------------------------------------------------------------------------

    def complete(self, request: Any) -> Response:
        """Generate one completion for a ``dspy.lm15.Request`` (called by ``dspy.LM``, possibly from many threads)."""
        if request.tools:
            raise UnsupportedFeatureError(f"models served by {type(self).__name__} do not support tool calling")
        weights, decoding = split_decoding(request.model)
        self.adapter_path(weights)  # refuse unknown ids in the caller's thread
        config = request.config
        params = SamplingParams(
            **decoding,
            max_tokens=config.max_tokens or self.default_max_tokens,
            temperature=config.temperature or 0.0,
            top_p=config.top_p if config.top_p is not None else 1.0,
            top_k=config.top_k or 0,
            stop=tuple(config.stop or ()),
            seed=config.seed,
            logprobs=config.logprobs,
            frequency_penalty=config.frequency_penalty or 0.0,
            presence_penalty=config.presence_penalty or 0.0,
        )
        with self._tokenize_lock:  # a fast tokenizer refuses concurrent use ("Already borrowed")
            prompt_ids = self.tokenizer(self._render(request), add_special_tokens=False)["input_ids"]
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise ContextLengthError(
                f"prompt of {len(prompt_ids)} tokens does not fit the model's context of {self.context_length}"
            )
        job = Job(weights, prompt_ids, replace(params, max_tokens=min(params.max_tokens, room)), Future())
        return self._response(request.model, self._decode(job))

    def stream(self, request: Any):
        """Stream a completion as one block (generation is batched, not incremental)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Engines are shared by every LM on the same model; nothing is released per LM."""

    # --- worker ------------------------------------------------------------------------------------------

    def _decode(self, job: Job) -> Completion:
        """Queue ``job`` for the worker thread and wait for its completion."""
        self._ensure_worker()
        self._queue.put(job)
        return job.future.result()

    def _serve(self) -> None:
        """Take jobs from ``self._queue`` forever and resolve each job's future."""
        raise NotImplementedError

    def _render(self, request: Any) -> str:
        messages = []
        if request.system:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        for message in request.messages:
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": message.text or ""})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name=self._worker_name, daemon=True)
                self._worker.start()

    @staticmethod
    def _fail(jobs: list[Job], error: BaseException) -> None:
        """Every waiting caller of ``jobs`` gets ``error`` instead of hanging."""
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _response(self, model_id: str, completion: Completion) -> Response:
        tokenizer = self.tokenizer
        logprobs = None
        if completion.scores is not None:
            logprobs = tuple(
                TokenLogprob(
                    token=tokenizer.decode([s.token_id]),
                    logprob=s.logprob,
                    token_id=s.token_id,
                    top=tuple(TopLogprob(tokenizer.decode([t]), lp, token_id=t) for t, lp in s.top),
                )
                for s in completion.scores
            )
        return Response(
            id=None,
            model=model_id,
            message=Message.assistant([TextPart(completion.text)]),
            finish_reason=completion.finish_reason,
            usage=Usage(input_tokens=completion.prompt_tokens, output_tokens=len(completion.token_ids)),
            logprobs=logprobs,
        )
