"""Shared fixtures: the embedded model, a tiny randomly-initialised chat model, and the shared LongLaMP sample."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No test reaches the Hugging Face hub; offline, vLLM skips its hub look-ups (which time out on a machine without it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DSPy caches LM answers on disk across processes. Adapter ids name their weights only, so a suite run after another
# would be answered from the first run's cache and never reach the engine it tests: each run gets its own cache
# (also for the processes the tests start).
_DSPY_CACHE = tempfile.mkdtemp(prefix="restpg-dspy-tests-dspy-cache-")
os.environ["DSPY_CACHEDIR"] = _DSPY_CACHE
atexit.register(shutil.rmtree, _DSPY_CACHE, ignore_errors=True)
if "dspy" in sys.modules:  # imported before this file: point its cache here too
    sys.modules["dspy"].configure_cache(disk_cache_dir=_DSPY_CACHE)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as safetensors (converted once per machine)."""
    from restpg_dspy.serving.models import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_path) -> Path:
    """A 2-layer Llama with random weights and the embedded model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-chat-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_random_adapter(model_dir: Path, path: Path, seed: int) -> Path:
    """Save a LoRA adapter with random, non-zero weights for the model in ``model_dir``: it changes what it writes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from restpg_dspy.serving.engine import LocalEngine

    return LocalEngine.shared(str(tiny_model_dir), batch_window_ms=50.0, default_max_tokens=16)


@pytest.fixture
def tiny_lm(tiny_engine, tiny_model_dir):
    import restpg_dspy

    return restpg_dspy.lm(f"local:{tiny_model_dir}", batch_window_ms=50.0, default_max_tokens=16, max_tokens=16)


@pytest.fixture
def shared_sample() -> Path:
    path = SHARED_DATA / "longlamp_abstract_sample.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared LongLaMP sample is only present in the development checkout)")
    return path
