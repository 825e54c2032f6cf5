"""Sampling through a running ``vllm serve``, with each LoRA adapter loaded at runtime under a versioned name.

:class:`VLLMServerEngine` renders and tokenizes prompts here, with the served model's own chat template, and sends
the token ids to the server's ``/v1/completions``, so the server decodes exactly the tokens the local engine would.
Adapters are loaded with ``POST /v1/load_lora_adapter`` and unloaded with ``/v1/unload_lora_adapter``: the server
must be started with ``--enable-lora``, ``--max-lora-rank`` at least the adapters' rank, and the environment variable
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, and the adapter folders must be readable by the server at the same path
(the same machine, or a shared filesystem).

Example:
    Start the server (the folder of the model the student trains on)::

        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/SmolLM2-135M-Instruct --enable-lora --port 8000

    then sample from it:

    >>> import restpg_dspy
    >>> sampler = restpg_dspy.lm("vllm-server:http://localhost:8000/v1", model="/models/SmolLM2-135M-Instruct")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
from dspy.lm15 import InvalidRequestError, ServerError, TransportError

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.queue import Job
from restpg_dspy.serving.sampling import Completion, TokenScore
from restpg_dspy.serving.vllm_engine import VLLMBackend

_TOKEN_ID = "token_id:"


def _token_id(token: str) -> int:
    return int(token.removeprefix(_TOKEN_ID))


def _ranked(top: dict[str, float] | None, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely alternatives of one position, as (token id, log-probability), most likely first."""
    return sorted(((_token_id(t), lp) for t, lp in (top or {}).items()), key=lambda item: -item[1])[:k]


class VLLMServerEngine(VLLMBackend):
    """Serves a model and its LoRA adapters to ``dspy.LM`` through a vLLM OpenAI-compatible server.

    Model ids are ``vllm/<name>-<fingerprint>[+lora-<hash>]``, as for the in-process :class:`VLLMEngine`. Requests are
    sent from the calling threads; the server batches them.

    Args:
        url: The server's API root, e.g. ``http://localhost:8000/v1``.
        model: The local folder (or cached hub id) of the model the server serves: its tokenizer renders the
            prompts and its fingerprint names the weights.
        served_model_name: The name the server serves the base model under (default: the only one it lists).
        max_lora_rank: The server's ``--max-lora-rank``; adapters above it are refused before they are sent.
        timeout: Seconds to wait for one completion.
        default_max_tokens: Token budget when a request sets none.
        api_key: The server's ``--api-key``, if it has one (never written to saved state).
    """

    _source_key = "url"

    def __init__(
        self,
        url: str,
        *,
        model: str = "local",
        served_model_name: str | None = None,
        max_lora_rank: int = 16,
        timeout: float = 600.0,
        default_max_tokens: int = 512,
        api_key: str | None = None,
    ):
        super().__init__(model, max_lora_rank=max_lora_rank, default_max_tokens=default_max_tokens)
        self.url = url.rstrip("/")
        self.settings = {
            "model": self.model_source,
            "served_model_name": served_model_name,
            "max_lora_rank": max_lora_rank,
            "timeout": timeout,
            "default_max_tokens": default_max_tokens,
        }
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._served_model_name = served_model_name
        self._max_model_len: int | None = None

    @property
    def context_length(self) -> int:
        """The server's ``max_model_len`` (asked once)."""
        self._discover()
        return self._max_model_len

    @property
    def _where(self) -> str:
        return f"the server {self.url}"

    @property
    def _source(self) -> str:
        return self.url

    def _load(self, name: str, version: int, path: Path) -> None:
        try:
            self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except (InvalidRequestError, ServerError) as err:
            raise UsageError(
                f"the server {self.url} refused the adapter {path}: {err}. It must run with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and read the adapter folder at this path"
            ) from err

    def _unload(self, name: str) -> None:
        self._post("/unload_lora_adapter", {"lora_name": name})

    # --- HTTP ----------------------------------------------------------------------------------------------

    def _decode(self, job: Job) -> Completion:
        params = job.params
        name = self._served.get(job.model_id)
        body = {
            "model": name or self._base_name(),
            "prompt": job.prompt_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "seed": params.seed,
            "stop": list(params.stop) or None,
            "logprobs": params.logprobs,
            **self._repetition_settings(params),
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }
        choice = self._post("/completions", body)["choices"][0]
        token_ids = list(choice["token_ids"])
        if choice["finish_reason"] == "stop" and choice.get("stop_reason") is None and token_ids:
            token_ids = token_ids[:-1]  # the end-of-sequence token is not part of the completion
        scores = None
        if params.logprobs is not None and choice.get("logprobs"):
            logprobs = choice["logprobs"]
            positions = zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
            scores = [
                TokenScore(_token_id(token), logprob, _ranked(top, params.logprobs))
                for token, logprob, top in itertools.islice(positions, len(token_ids))
            ]
        return Completion(choice["text"], token_ids, choice["finish_reason"], len(job.prompt_ids), scores)

    def _base_name(self) -> str:
        self._discover()
        return self._served_model_name

    def _discover(self) -> None:
        """Ask the server, once, for the base model's served name and its ``max_model_len``."""
        if self._max_model_len is not None:
            return
        models = self._get("/models")["data"]
        bases = [m for m in models if not m.get("parent")]
        name = self._served_model_name or (bases[0]["id"] if len(bases) == 1 else None)
        base = next((m for m in bases if m["id"] == name), None)
        if base is None:
            raise UsageError(
                f"the server {self.url} serves {[m['id'] for m in bases]}; pass served_model_name= to pick the base "
                "model the student trains"
            )
        self._served_model_name = name
        self._max_model_len = int(base.get("max_model_len") or self._tokenizer.model_max_length)

    def _get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, {k: v for k, v in body.items() if v is not None})

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One call to the server; failures become DSPy's errors (transport and 5xx ones are retried by dspy.LM)."""
        try:
            reply = self._client.request(method, self.url + path, json=body)
        except httpx.HTTPError as err:
            raise TransportError(
                f"the vLLM server at {self.url} cannot be reached ({type(err).__name__}: {err}); is it running?",
                provider="vllm-server",
            ) from err
        if reply.status_code >= 500:
            raise ServerError(f"the vLLM server at {self.url} failed: {reply.text[:500]}", status=reply.status_code)
        if reply.status_code >= 400:
            raise InvalidRequestError(f"{reply.status_code} {reply.text[:500]}", status=reply.status_code)
        return reply.json() if reply.headers.get("content-type", "").startswith("application/json") else reply.text
