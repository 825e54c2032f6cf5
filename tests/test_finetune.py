import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from restpg_dspy.finetune import LoRATrainingConfig, NonFiniteLossError, _trainer_classes, assistant_token_losses
from restpg_dspy.training_data import TrainingDataError

TARGET = "blue whale"


def chat(question, answer=TARGET, weight=None):
    row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    if weight is not None:
        row["weight"] = weight
    return row


def train(lm, rows, tmp_path, **kwargs):
    settings = {"output_dir": str(tmp_path / "adapters"), "learning_rate": 1e-2, "max_steps": 25, "r": 8, **kwargs}
    job = lm.finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    return job, job.result()


def lora_b_norm(job):
    weights = load_file(f"{job.log['adapter']}/adapter_model.safetensors")
    return sum(float(t.abs().sum()) for name, t in weights.items() if "lora_B" in name)


def test_training_changes_weights_and_behaviour(tiny_lm, tmp_path):
    rows = [chat("What is the largest animal?")] * 4
    job, tuned = train(tiny_lm, rows, tmp_path, max_steps=40)
    assert tuned.model.startswith(tiny_lm.model + "+lora-")
    assert lora_b_norm(job) > 0
    assert job.log["losses"][-1] < job.log["losses"][0] / 4
    assert job.status() == "succeeded"
    question = "What is the largest animal?"
    assert tuned(question, max_tokens=4)[0].startswith(TARGET)
    assert not tiny_lm(question, max_tokens=4)[0].startswith(TARGET)
    log = json.loads((tmp_path / "adapters" / job.log["adapter"].split("/")[-1] / "training_log.json").read_text())
    assert log["rows"] == 4 and log["steps"] == 40


def test_zero_weights_leave_the_adapter_untrained(tiny_lm, tmp_path):
    job, _ = train(tiny_lm, [chat("Largest animal?", weight=0.0)] * 4, tmp_path, max_steps=3)
    assert lora_b_norm(job) == 0.0
    job, _ = train(tiny_lm, [chat("Largest animal?", weight=1.0)] * 4, tmp_path, max_steps=3)
    assert lora_b_norm(job) > 0.0


def test_row_weights_scale_the_loss(tiny_engine):
    trainer_class, _ = _trainer_classes()
    model = tiny_engine.loaded.model
    labels = torch.tensor([[-100, 5, 6, 7], [-100, 8, 9, -100]])
    ids = labels.clamp(min=1)

    def batch(weights):
        mask = torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.clone(), "weight": torch.tensor(weights)}

    fake = SimpleNamespace(args=SimpleNamespace(gradient_accumulation_steps=1), state=SimpleNamespace(global_step=0))
    with torch.no_grad():
        both = trainer_class.compute_loss(fake, model, batch([1.0, 1.0]), num_items_in_batch=5)
        first = trainer_class.compute_loss(fake, model, batch([1.0, 0.0]), num_items_in_batch=5)
        second_doubled = trainer_class.compute_loss(fake, model, batch([0.0, 2.0]), num_items_in_batch=5)
    assert torch.isclose(both, first + second_doubled / 2)
    assert first > 0 and second_doubled > 0


def test_losses_from_kept_logits_equal_full_logits(tiny_engine):
    model = tiny_engine.loaded.model
    labels = torch.tensor([[-100, -100, -100, 5, 6, 7], [-100, -100, 8, 9, -100, -100]])
    inputs = {"input_ids": labels.clamp(min=3), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    with torch.no_grad():
        token_loss, trained, outputs = assistant_token_losses(model, inputs, labels)
        full_logits = model(**inputs).logits[:, :-1].float()
    assert outputs.logits.shape[1] == 4  # positions 1..4 precede a trained token in some row; 0 does not
    full = torch.nn.functional.cross_entropy(
        full_logits.reshape(-1, full_logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
    )
    assert torch.allclose(token_loss[trained], full[labels[:, 1:].reshape(-1).ne(-100)])
    assert int(trained.sum()) == 5


def test_same_data_and_seed_give_the_same_model_id(tiny_lm, tmp_path):
    rows = [chat("Name a big animal.")] * 2
    _, a = train(tiny_lm, rows, tmp_path, max_steps=2)
    _, b = train(tiny_lm, rows, tmp_path, max_steps=2)
    _, c = train(tiny_lm, rows, tmp_path, max_steps=2, seed=1)
    assert a.model == b.model != c.model


def test_continue_from_adapter(tiny_lm, tmp_path):
    job, tuned = train(tiny_lm, [chat("Largest animal?")] * 2, tmp_path, max_steps=2)
    job2, again = train(tuned, [chat("Largest animal?")] * 2, tmp_path, max_steps=2, start_from="adapter")
    assert job2.log["start_from"] == job.log["adapter"]
    assert again.model != tuned.model and again.model.startswith(tiny_lm.model + "+lora-")
    with pytest.raises(ValueError, match="needs an LM that serves an adapter"):
        train(tiny_lm, [chat("x")], tmp_path, start_from="adapter")


def test_adapters_share_one_base_model(tiny_lm, tiny_engine, tmp_path):
    _, a = train(tiny_lm, [chat("One?", "one")] * 2, tmp_path, max_steps=2)
    _, b = train(tiny_lm, [chat("Two?", "two")] * 2, tmp_path, max_steps=2)
    a("hello"), b("hello"), tiny_lm("hello")
    host = tiny_engine._host
    assert host._peft.base_model.model is tiny_engine.loaded.model
    assert {tiny_engine.adapter_path(a.model), tiny_engine.adapter_path(b.model)} <= set(host._names)


def test_truncated_rows_are_counted(tiny_lm, tmp_path):
    long_row = chat("word " * 100, "short answer " * 5)
    job, _ = train(tiny_lm, [long_row, chat("short?")], tmp_path, max_steps=1, max_length=64)
    assert job.log["rows_truncated"] == 1
    assert job.log["rows_dropped_after_truncation"] == [0]  # its answer was cut off entirely


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no training rows"),
        ([chat("ok"), {"messages": [{"role": "user", "content": "no answer"}]}], "row 1: has no assistant turn"),
        ([{"prompt": "x"}], "row 0: expected a non-empty 'messages' list"),
        ([chat("ok", weight=float("nan"))], "row 0: weight must be a finite number"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "unknown role 'robot'"),
    ],
)
def test_bad_rows_fail_with_the_row_named(tiny_lm, tmp_path, rows, message):
    job = tiny_lm.finetune(train_data=rows, train_data_format="chat", train_kwargs={"output_dir": str(tmp_path)})
    with pytest.raises(TrainingDataError, match=message):
        job.result()
    assert job.status() == "failed"
    assert list(tmp_path.iterdir()) == []


def test_unknown_train_kwarg_is_named():
    with pytest.raises(ValueError, match="unknown train_kwargs \\['lora_rank'\\]"):
        LoRATrainingConfig.from_kwargs({"lora_rank": 4})


def test_non_finite_loss_publishes_nothing(tiny_lm, tmp_path):
    out = tmp_path / "adapters"
    with pytest.raises(NonFiniteLossError, match="no adapter was published"):
        train(tiny_lm, [chat("Largest animal?")] * 4, tmp_path, learning_rate=1e30, max_grad_norm=1e30, max_steps=6)
    assert [p for p in out.iterdir()] == []
