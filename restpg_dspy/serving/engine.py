"""A DSPy engine that serves a local Hugging Face causal LM, and its LoRA adapters, with dynamic batching.

DSPy 3.4 calls ``engine.complete(request)`` once per candidate, from whichever thread runs the program.
Calls that arrive within a short window are coalesced into one batched generation, so ``dspy.Parallel``,
``dspy.Evaluate`` and the optimizer's samplers get batch throughput without knowing about it.

Example:
    >>> import dspy
    >>> from restpg_dspy.serving.engine import LocalEngine
    >>> engine = LocalEngine.shared("local")  # doctest: +SKIP
    >>> lm = dspy.LM(engine.base_id, engine=engine, temperature=0.0)  # doctest: +SKIP
    >>> lm("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.decoding import KV_CACHES, DecodingBatch
from restpg_dspy.serving.generation import generate
from restpg_dspy.serving.model_ids import adapter_hash
from restpg_dspy.serving.models import LoadedModel, load_model
from restpg_dspy.serving.queue import Job, QueuedEngine, numerics_mark


class _AdapterHost:
    """One loaded base model and the adapters attached to it; one forward pass at a time."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.lock = threading.Lock()
        self._peft = None
        self._names: dict[Path, str] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()  # loaded adapter names, least recently used first

    def model_for(self, adapter: Path | None, keep: int | None = None) -> tuple[Any, Any]:
        """Return (model, context manager) that generates with ``adapter`` (``None``: the base weights), keeping at
        most ``keep`` adapters loaded (the least recently used are deleted, and loaded again when asked for)."""
        from contextlib import nullcontext

        if adapter is None:
            return (
                (self.loaded.model, nullcontext()) if self._peft is None else (self._peft, self._peft.disable_adapter())
            )
        if adapter not in self._names:
            self._names[adapter] = f"lora_{adapter_hash(adapter)}"
        name = self._names[adapter]
        if self._peft is None:
            from peft import PeftModel

            self._peft = PeftModel.from_pretrained(self.loaded.model, adapter, adapter_name=name).eval()
        elif name not in self._peft.peft_config:  # never loaded, or unloaded since
            self._peft.load_adapter(adapter, adapter_name=name)
        self._peft.set_adapter(name)
        self._recent[name] = None
        self._recent.move_to_end(name)
        while keep is not None and len(self._peft.peft_config) > keep:
            oldest = next((n for n in self._recent if n != name), None)
            if oldest is None:
                break
            self._recent.pop(oldest)
            self._peft.delete_adapter(oldest)
        return self._peft, nullcontext()

    def batch_for(self, adapters: list[Path | None], keep: int) -> tuple[Any, list[str] | None]:
        """Return (model, adapter name per row) that generate every row with its own adapter in one batch (PEFT's
        mixed batches; ``"__base__"`` rows run on the base weights). At most ``keep`` distinct adapters."""
        for adapter in dict.fromkeys(a for a in adapters if a is not None):
            self.model_for(adapter, keep)
        if self._peft is None:  # base rows only, on a model that never served an adapter
            return self.loaded.model, None
        return self._peft, [self._names[a] if a is not None else "__base__" for a in adapters]

    def unload(self, adapter: Path) -> None:
        """Delete ``adapter``'s weights from the model, unless it is the only adapter loaded (PEFT needs one)."""
        name = self._names.pop(adapter, None)
        loaded = self._peft.peft_config if self._peft is not None else {}
        if name in loaded and len(loaded) > 1:
            if self._peft.active_adapter == name:
                self._peft.set_adapter(next(n for n in loaded if n != name))
            self._peft.delete_adapter(name)
            self._recent.pop(name, None)


_HOSTS: dict[int, _AdapterHost] = {}
_REGISTRY_LOCK = threading.Lock()


class LocalEngine(QueuedEngine):
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
        merged_adapters: How many adapters to keep merged into a copy of the base weights each, for generation
            (0: every adapter runs unmerged on the shared base model). A merged copy decodes at the base model's
            speed, as its layers carry no LoRA branch, but holds a full copy of the weights; it is made on an
            adapter's first request (about a load of the model) and the least recently used copy is dropped
            beyond this many. Training never sees it: it trains its own unmerged adapter.
        max_loaded_adapters: Most adapters kept loaded on the shared base model (a personal adapter per user can be
            many); the least recently used is deleted beyond it and loaded again from its folder when asked for.
        mixed_adapter_batches: Generate the requests of one batch that name different adapters (and the base
            weights) together, each row with its own adapter (PEFT's mixed-batch LoRA), instead of one generation
            per adapter; up to ``max_loaded_adapters`` adapters per generation.
        kv_cache: ``"reserved"`` (each layer's KV cache allocated once per batch, with room for its token budget) or
            ``"dynamic"`` (transformers' cache, which copies itself at every decoding step). The tokens are the same;
            only the speed differs.
        batching: ``"static"`` (a batch is the requests that arrived within ``batch_window_ms``; it runs until its
            last row ends) or ``"continuous"`` (requests for the batch's weights that arrive while it decodes join
            it between steps, up to ``max_batch_size`` rows, so a finished row's slot is taken at once; requests for
            other weights wait until it drains). A row's tokens do not depend on which rows share its steps.

    Attributes:
        stats: Counters for throughput monitoring: ``batches`` run, ``rows`` and ``generated_tokens`` generated,
            decoding ``steps`` run and ``row_steps``, the rows that took part in each step added up (``row_steps /
            steps``: how many rows shared a step on average).
    """

    _base_prefix = "local"
    _worker_name = "restpg-local-engine"

    def __init__(
        self,
        model: str = "local",
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_batch_size: int = 16,
        batch_window_ms: float = 20.0,
        default_max_tokens: int = 512,
        merged_adapters: int = 0,
        max_loaded_adapters: int = 16,
        mixed_adapter_batches: bool = False,
        kv_cache: str = "reserved",
        batching: str = "static",
    ):
        if max_batch_size < 1:
            raise UsageError("max_batch_size must be at least 1")
        if merged_adapters < 0:
            raise UsageError(f"merged_adapters must be >= 0 (0 serves adapters unmerged), not {merged_adapters}")
        if max_loaded_adapters < 1:
            raise UsageError(f"max_loaded_adapters must be at least 1, not {max_loaded_adapters}")
        if kv_cache not in KV_CACHES:
            raise UsageError(f"kv_cache must be one of {KV_CACHES}, not {kv_cache!r}")
        if batching not in ("static", "continuous"):
            raise UsageError(f"batching must be 'static' or 'continuous', not {batching!r}")
        if batching == "continuous" and mixed_adapter_batches:
            raise UsageError("mixed_adapter_batches works with batching='static' only")
        super().__init__(default_max_tokens=default_max_tokens)
        self.spec, self.dtype, self.device = model, dtype, device
        self.max_batch_size = max_batch_size
        self.batch_window_ms = batch_window_ms
        self.merged_adapters = merged_adapters
        self.max_loaded_adapters = max_loaded_adapters
        self.mixed_adapter_batches = mixed_adapter_batches
        self.kv_cache = kv_cache
        self.batching = batching
        self._merged: OrderedDict[Path, Any] = OrderedDict()  # adapter folder -> its merged copy, oldest use first
        self.loaded = load_model(model, dtype=dtype, device=device)
        with _REGISTRY_LOCK:
            self._host = _HOSTS.setdefault(id(self.loaded), _AdapterHost(self.loaded))
        tokenizer = self.loaded.tokenizer
        eos = self.loaded.model.generation_config.eos_token_id
        self._eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        self.stats = {"batches": 0, "rows": 0, "generated_tokens": 0, "steps": 0, "row_steps": 0}
        self.settings = {name: getattr(self, name) for name in self.setting_defaults()}

    @property
    def weights_id(self) -> str:
        """The base weights: ``<name>-<content fingerprint>``."""
        return self.loaded.weights_id

    @property
    def _numerics(self) -> str:
        return numerics_mark(self.loaded.dtype)

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer."""
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int:
        """The most tokens a prompt and its completion may hold together."""
        return self.loaded.context_length

    def unload_adapter(self, model_id: str) -> None:
        """Forget ``model_id``'s adapter and free its weights (the base model's only adapter stays loaded)."""
        path = self.adapters.pop(model_id, None)
        if path is not None:
            self._merged.pop(path, None)
            with self._host.lock:
                self._host.unload(path)

    @property
    def _source(self) -> str:
        return self.spec if self.spec == "local" else str(self.loaded.path)

    # --- batching ----------------------------------------------------------------------------------------

    def _serve(self) -> None:
        if self.batching == "continuous":
            return self._serve_continuously()
        while True:
            batch = self._gather([self._queue.get()])
            groups: dict[str, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.model_id, []).append(job)
            if self.mixed_adapter_batches and not self.merged_adapters and len(groups) > 1:
                groups = {"": batch}
            for model_id, jobs in groups.items():
                try:
                    self._run_mixed(jobs) if model_id == "" else self._run(model_id, jobs)
                except Exception as err:  # the worker lives on; this batch's callers get the error
                    self._fail(jobs, err)

    def _gather(self, batch: list[Job]) -> list[Job]:
        """``batch`` with the requests that arrive within the batch window, up to ``max_batch_size``."""
        deadline = time.monotonic() + self.batch_window_ms / 1000
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _serve_continuously(self) -> None:  # runs for the engine's life
        waiting: list[Job] = []
        while True:
            if not waiting:
                waiting = self._gather([self._queue.get()])
            model_id = waiting[0].model_id
            running: dict[int, Job] = {}
            try:
                self._decode_continuously(model_id, waiting, running)
            except Exception as err:  # the worker lives on; the callers for these weights get the error
                stranded = [job for job in waiting if job.model_id == model_id]
                waiting[:] = [job for job in waiting if job.model_id != model_id]
                self._fail([*running.values(), *stranded], err)

    def _decode_continuously(self, model_id: str, waiting: list[Job], running: dict[int, Job]) -> None:
        """Decode ``model_id``'s waiting requests, taking in its new ones between steps while no other weights wait."""
        adapter = self.adapter_path(model_id)
        with contextlib.ExitStack() as stack:
            if adapter is not None and self.merged_adapters:
                model = self.merged_model(adapter)
            else:
                stack.enter_context(self._host.lock)
                model, activation = self._host.model_for(adapter, self.max_loaded_adapters)
                stack.enter_context(activation)
            batch = DecodingBatch(model, self.tokenizer, self._eos, kv_cache=self.kv_cache)
            while True:
                while True:
                    try:
                        waiting.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not running or all(job.model_id == model_id for job in waiting):
                    joining = [job for job in waiting if job.model_id == model_id][: self.max_batch_size - len(batch)]
                    if joining:
                        for job in joining:
                            waiting.remove(job)
                        ids = batch.add([job.prompt_ids for job in joining], [job.params for job in joining])
                        running.update(zip(ids, joining, strict=True))
                if not len(batch):
                    break
                finished = batch.step()
                for row, completion in finished:
                    running.pop(row).future.set_result(completion)
                self.stats["rows"] += len(finished)
                self.stats["generated_tokens"] += sum(len(completion.token_ids) for _, completion in finished)
        self.stats["batches"] += 1
        self.stats["steps"] += batch.steps
        self.stats["row_steps"] += batch.row_steps

    def merged_model(self, adapter: Path) -> Any:
        """The copy of the base weights with ``adapter`` merged in, made on first use (see ``merged_adapters``)."""
        if adapter in self._merged:
            self._merged.move_to_end(adapter)
            return self._merged[adapter]
        from peft import PeftModel

        from restpg_dspy.serving.models import load_causal_lm

        # Fresh weights from disk: the shared model carries the LoRA layers of every adapter loaded on it.
        base = load_causal_lm(self.loaded.path, self.loaded.dtype, self.loaded.device)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
        self._merged[adapter] = merged
        while len(self._merged) > self.merged_adapters:
            self._merged.popitem(last=False)
        return merged

    def _run(self, model_id: str, jobs: list[Job]) -> None:
        prompts, params = [job.prompt_ids for job in jobs], [job.params for job in jobs]
        adapter = self.adapter_path(model_id)
        if adapter is not None and self.merged_adapters:
            completions = self._generate(self.merged_model(adapter), prompts, params)
        else:
            with self._host.lock:
                model, context_manager = self._host.model_for(adapter, self.max_loaded_adapters)
                with context_manager:
                    completions = self._generate(model, prompts, params)
        self._finish(jobs, completions)

    def _run_mixed(self, jobs: list[Job]) -> None:
        """Jobs on several adapters, each generated with its own in one batch per ``max_loaded_adapters`` of them."""
        by_adapter: dict[Path | None, list[Job]] = {}
        for job in jobs:
            by_adapter.setdefault(self.adapter_path(job.model_id), []).append(job)
        adapters = list(by_adapter)
        for start in range(0, len(adapters), self.max_loaded_adapters):
            part = [
                (adapter, job)
                for adapter in adapters[start : start + self.max_loaded_adapters]
                for job in by_adapter[adapter]
            ]
            prompts, params = [job.prompt_ids for _, job in part], [job.params for _, job in part]
            with self._host.lock:
                model, names = self._host.batch_for([adapter for adapter, _ in part], self.max_loaded_adapters)
                completions = self._generate(model, prompts, params, adapters=names)
            self._finish([job for _, job in part], completions)

    def _generate(self, model: Any, prompts: list[list[int]], params: list[Any], **options: Any) -> list[Any]:
        return generate(
            model, self.tokenizer, prompts, params, self._eos, kv_cache=self.kv_cache, counters=self.stats, **options
        )

    def _finish(self, jobs: list[Job], completions: list[Any]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += len(jobs)
        self.stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
        for job, completion in zip(jobs, completions, strict=True):
            job.future.set_result(completion)
