import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restpg_dspy.memory import DYNAMIC_MALLOC_ENV
from restpg_dspy.serving.models import ModelLoadError, load_model, model_fingerprint, resolve_dtype, resolve_model_path


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        resolve_model_path(str(missing))


def test_file_instead_of_folder_is_refused(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(file))


def test_model_that_is_not_a_causal_lm_is_refused(tmp_path, embedded_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(embedded_path).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path, embedded_path):
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(embedded_path).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="config"):
        load_model(str(tmp_path))


def test_fingerprint_changes_with_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    before = model_fingerprint(tmp_path)
    weights.write_bytes(b"a" * 4095 + b"b")  # same size, different content
    assert model_fingerprint(tmp_path) != before


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        resolve_dtype("float7", "cpu")


def test_embedded_model_loads_once_and_is_named(embedded_path):
    first = load_model("local")
    assert first is load_model("local")
    assert first.weights_id == f"SmolLM2-135M-Instruct-{first.fingerprint}"
    assert first.path == embedded_path


FRAGMENTING_PROGRAM = r"""
import ctypes, resource, sys
from pathlib import Path

if sys.argv[1] == "load":
    from restpg_dspy.serving.models import load_causal_lm

    load_causal_lm(Path(sys.argv[2]), None, "cpu")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20

# A freed 30 MiB block raises glibc's dynamic threshold, so 20 MiB blocks then come from the heap; freeing all but
# the topmost leaves holes the heap cannot give back.
libc.free(libc.malloc(30 << 20))
blocks = [libc.malloc(20 << 20) for _ in range(12)]
for block in blocks:
    ctypes.memset(block, 1, 20 << 20)
before = resident_mib()
for block in blocks[:-1]:
    libc.free(block)
print(before - resident_mib())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux with glibc")
def test_loading_a_model_makes_freed_large_blocks_leave_the_process(tiny_model_dir):
    def released_mib(*args: str) -> float:
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", DYNAMIC_MALLOC_ENV)}
        command = [sys.executable, "-c", FRAGMENTING_PROGRAM, *args]
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        return float(run.stdout.split()[-1])

    assert released_mib("plain") < 50  # glibc's default keeps the 220 MiB freed
    assert released_mib("load", str(tiny_model_dir)) > 200
