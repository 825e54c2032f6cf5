import json

import pytest

from restpg_dspy.models import ModelLoadError, load_model, model_fingerprint, resolve_dtype, resolve_model_path


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
