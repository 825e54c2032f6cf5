import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from restpg_dspy.errors import UsageError
from restpg_dspy.training.stacking import stack_adapters
from tests.conftest import save_random_adapter


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_stacked_adapter_computes_the_shared_and_the_personal_update_together(tiny_model_dir, tmp_path):
    shared = save_random_adapter(tiny_model_dir, tmp_path / "shared", seed=1)
    # The personal adapter is trained over the shared one merged in; another rank, alpha and rsLoRA scaling.
    torch.manual_seed(2)
    below = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), shared).merge_and_unload()
    config = LoraConfig(r=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj"])
    config.init_lora_weights = False
    personal_model = get_peft_model(below, config)
    personal_model.save_pretrained(tmp_path / "personal")
    ids = torch.tensor([[1, 50, 300, 7, 900, 12]])
    expected = logits(personal_model, ids)

    stacked = stack_adapters(shared, tmp_path / "personal", tmp_path / "stacked")
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), stacked)
    assert json.loads((stacked / "adapter_config.json").read_text())["r"] == 4 + 2
    torch.testing.assert_close(logits(served, ids), expected, atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(logits(base, ids), expected, atol=1e-2)  # the comparison can fail


def test_adapters_that_cannot_stack_are_refused_with_the_reason(tiny_model_dir, tmp_path):
    shared = save_random_adapter(tiny_model_dir, tmp_path / "shared", seed=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["k_proj"])).save_pretrained(tmp_path / "other")
    with pytest.raises(UsageError, match="adapt different modules"):
        stack_adapters(shared, tmp_path / "other", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True)).save_pretrained(
        tmp_path / "dora"
    )
    with pytest.raises(UsageError, match="use_dora"):
        stack_adapters(shared, tmp_path / "dora", tmp_path / "out")
    with pytest.raises(UsageError, match="not a saved LoRA adapter"):
        stack_adapters(shared, tmp_path / "missing", tmp_path / "out")
