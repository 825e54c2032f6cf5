"""A DSPy engine that serves a local Hugging Face causal LM, and its LoRA adapters, with dynamic batching.

DSPy 3.4 calls ``engine.complete(request)`` once per candidate, from whichever thread runs the program.
Calls that arrive within a short window are coalesced into one batched generation, so ``dspy.Parallel``,
``dspy.Evaluate`` and the optimizer's samplers get batch throughput without knowing about it.

Example:
    >>> import dspy
    >>> from restpg_dspy.engine import LocalEngine
    >>> engine = LocalEngine.shared("local")  # doctest: +SKIP
    >>> lm = dspy.LM(engine.base_id, engine=engine, temperature=0.0)  # doctest: +SKIP
    >>> lm("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

from __future__ import annotations

import hashlib
import inspect
import json
import queue
import threading
import time
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

from restpg_dspy.errors import UsageError
from restpg_dspy.generation import Completion, SamplingParams, generate
from restpg_dspy.models import LoadedModel, home, load_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_ADAPTER_TAG = "+lora-"


# PEFT writes these set-valued settings in set order, which changes from process to process.
_UNORDERED_CONFIG_KEYS = ("target_modules", "exclude_modules", "modules_to_save")


def adapter_hash(path: Path) -> str:
    """Content hash of a saved LoRA adapter (its config, in a canonical form, and its weights), 12 hex digits.

    The same weights and settings give the same hash in every process, so ids and caches carry across runs.
    """
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = path / name
        if not file.exists():
            raise FileNotFoundError(f"{path} is not a saved adapter: {name} is missing")
        content = file.read_bytes()
        if name.endswith(".json"):
            config = json.loads(content)
            for key in _UNORDERED_CONFIG_KEYS:
                if isinstance(config.get(key), list):
                    config[key] = sorted(config[key])
            content = json.dumps(config, sort_keys=True).encode()
        digest.update(name.encode())
        digest.update(content)
    return digest.hexdigest()[:12]


def default_adapter_root() -> Path:
    """Where adapters are published when no output folder is given: ``<home>/adapters``."""
    return home() / "adapters"


class _AdapterHost:
    """One loaded base model and the adapters attached to it; one forward pass at a time."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.lock = threading.Lock()
        self._peft = None
        self._names: dict[Path, str] = {}

    def model_for(self, adapter: Path | None) -> tuple[Any, Any]:
        """Return (model, context manager) that generates with ``adapter`` (``None``: the base weights)."""
        from contextlib import nullcontext

        if adapter is None:
            return (
                (self.loaded.model, nullcontext()) if self._peft is None else (self._peft, self._peft.disable_adapter())
            )
        name = self._names.get(adapter)
        if name is None:
            from peft import PeftModel

            name = f"lora_{adapter_hash(adapter)}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.loaded.model, adapter, adapter_name=name).eval()
            else:
                self._peft.load_adapter(adapter, adapter_name=name)
            self._names[adapter] = name
        self._peft.set_adapter(name)
        return self._peft, nullcontext()


_HOSTS: dict[int, _AdapterHost] = {}
_ENGINES: dict[tuple, LocalEngine] = {}
_REGISTRY_LOCK = threading.Lock()


@dataclass
class _Job:
    model_id: str
    prompt: str
    params: SamplingParams
    future: Future


class LocalEngine:
    """Serves a local causal LM and its LoRA adapters to ``dspy.LM`` through DSPy's engine interface.

    The model id in each request picks the weights: ``engine.base_id`` for the base model, or an id returned by
    :meth:`register_adapter` (``<base_id>+lora-<content hash>``) for an adapter on it. Several adapters share
    the one base model loaded in memory.

    Args:
        model: ``"local"`` (the embedded default), a local folder or a Hugging Face hub id.
        dtype: ``"auto"`` (bfloat16 on a capable GPU, float32 on CPU, which batches faster there) or a dtype name.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        max_batch_size: Most requests generated together.
        batch_window_ms: How long the first request of a batch waits for others to join it.
        default_max_tokens: Token budget when a request sets none.

    Attributes:
        stats: Counters of batches run, rows generated and tokens generated, for throughput monitoring.
    """

    def __init__(
        self,
        model: str = "local",
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_batch_size: int = 16,
        batch_window_ms: float = 20.0,
        default_max_tokens: int = 512,
    ):
        if max_batch_size < 1:
            raise UsageError("max_batch_size must be at least 1")
        self.spec, self.dtype, self.device = model, dtype, device
        self.max_batch_size = max_batch_size
        self.batch_window_ms = batch_window_ms
        self.default_max_tokens = default_max_tokens
        self.loaded = load_model(model, dtype=dtype, device=device)
        with _REGISTRY_LOCK:
            self._host = _HOSTS.setdefault(id(self.loaded), _AdapterHost(self.loaded))
        self.adapters: dict[str, Path] = {}
        tokenizer = self.loaded.tokenizer
        eos = self.loaded.model.generation_config.eos_token_id
        self._eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        self.stats = {"batches": 0, "rows": 0, "generated_tokens": 0}
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def shared(cls, model: str = "local", **settings: Any) -> LocalEngine:
        """Return the process-wide engine for these settings, creating it on first use."""
        options = {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY}
        unknown = sorted(set(settings) - set(options))
        if unknown:
            raise TypeError(f"unknown LocalEngine settings {unknown}; known: {sorted(options)}")
        key = (model, tuple(sorted({**options, **settings}.items())))
        with _REGISTRY_LOCK:
            engine = _ENGINES.get(key)
        if engine is None:
            engine = cls(model, **settings)
            with _REGISTRY_LOCK:
                engine = _ENGINES.setdefault(key, engine)
        return engine

    def __deepcopy__(self, memo: dict) -> LocalEngine:
        # An engine is a shared service (a loaded model, a batching thread): program copies share it.
        return self

    @property
    def base_id(self) -> str:
        """Model id of the base weights, e.g. ``local/SmolLM2-135M-Instruct-1a2b3c4d``."""
        return self.loaded.model_id

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer."""
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int:
        """The most tokens a prompt and its completion may hold together."""
        return self.loaded.context_length

    def register_adapter(self, path: str | Path) -> str:
        """Make a saved LoRA adapter servable and return its model id (base id + adapter content hash)."""
        path = Path(path).resolve()
        model_id = f"{self.base_id}{_ADAPTER_TAG}{adapter_hash(path)}"
        self.adapters[model_id] = path
        return model_id

    def adapter_path(self, model_id: str) -> Path | None:
        """The adapter folder behind ``model_id`` (``None`` for the base weights).

        Ids not registered in this process are looked up in the default adapter folder, so a model id
        saved earlier resolves in a new process.

        Raises:
            UnsupportedModelError: the id names other base weights or an adapter that cannot be found.
        """
        if model_id == self.base_id:
            return None
        if model_id in self.adapters:
            return self.adapters[model_id]
        base, tag, digest = model_id.partition(_ADAPTER_TAG)
        if base == self.base_id and tag:
            for candidate in default_adapter_root().glob(f"*{digest}"):
                if candidate.is_dir() and adapter_hash(candidate) == digest:
                    self.adapters[model_id] = candidate
                    return candidate
            raise UnsupportedModelError(
                f"adapter {digest} of {base} is not registered and not in {default_adapter_root()}; "
                "call engine.register_adapter(path)"
            )
        raise UnsupportedModelError(f"model {model_id!r} is not served by this engine (base {self.base_id})")

    # --- DSPy engine interface -------------------------------------------------------------------------

    def complete(self, request: Any) -> Response:
        """Generate one completion for a ``dspy.lm15.Request`` (called by ``dspy.LM``, possibly from many threads)."""
        if request.tools:
            raise UnsupportedFeatureError("local models served by LocalEngine do not support tool calling")
        self.adapter_path(request.model)  # refuse unknown ids in the caller's thread
        config = request.config
        params = SamplingParams(
            max_tokens=config.max_tokens or self.default_max_tokens,
            temperature=config.temperature or 0.0,
            top_p=config.top_p if config.top_p is not None else 1.0,
            top_k=config.top_k or 0,
            stop=tuple(config.stop or ()),
            seed=config.seed,
            logprobs=config.logprobs,
        )
        job = _Job(request.model, self._render(request), params, Future())
        self._ensure_worker()
        self._queue.put(job)
        return self._response(request.model, job.future.result())

    def stream(self, request: Any):
        """Stream a completion as one block (generation is batched, not incremental)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Engines are shared by every LM on the same model; nothing is released per LM."""

    def dump_state(self) -> dict[str, Any]:
        """JSON state that :meth:`load_state` turns back into an engine serving the same weights."""
        return {
            "model": self.spec if self.spec == "local" else str(self.loaded.path),
            "dtype": self.dtype,
            "device": self.device,
            "max_batch_size": self.max_batch_size,
            "batch_window_ms": self.batch_window_ms,
            "default_max_tokens": self.default_max_tokens,
            "adapters": {model_id: str(path) for model_id, path in self.adapters.items()},
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        """Rebuild (or reuse) the engine described by :meth:`dump_state`, with its adapters registered."""
        settings = {k: state[k] for k in ("dtype", "device", "max_batch_size", "batch_window_ms", "default_max_tokens")}
        engine = cls.shared(state["model"], **settings)
        for path in state.get("adapters", {}).values():
            engine.register_adapter(path)
        return engine

    # --- batching ----------------------------------------------------------------------------------------

    def _render(self, request: Any) -> str:
        messages = []
        if request.system:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        for message in request.messages:
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": message.text or ""})
        return self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="restpg-local-engine", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.batch_window_ms / 1000
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[str, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.model_id, []).append(job)
            for model_id, jobs in groups.items():
                try:
                    self._run(model_id, jobs)
                except Exception as err:  # the worker lives on; this batch's callers get the error
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(err)

    def _run(self, model_id: str, jobs: list[_Job]) -> None:
        tokenizer, context = self.loaded.tokenizer, self.loaded.context_length
        ready, prompts, params = [], [], []
        for job in jobs:
            ids = tokenizer(job.prompt, add_special_tokens=False)["input_ids"]
            room = context - len(ids)
            if room < 1:
                job.future.set_exception(
                    ContextLengthError(f"prompt of {len(ids)} tokens does not fit the model's context of {context}")
                )
                continue
            ready.append(job)
            prompts.append(ids)
            params.append(replace(job.params, max_tokens=min(job.params.max_tokens, room)))
        if not ready:
            return
        try:
            with self._host.lock:
                model, context_manager = self._host.model_for(self.adapter_path(model_id))
                with context_manager:
                    completions = generate(model, tokenizer, prompts, params, self._eos)
        except Exception as err:  # every waiting caller gets the failure instead of hanging
            for job in ready:
                job.future.set_exception(err)
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(ready)
        self.stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
        for job, completion in zip(ready, completions, strict=True):
            job.future.set_result(completion)

    def _response(self, model_id: str, completion: Completion) -> Response:
        tokenizer = self.loaded.tokenizer
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
