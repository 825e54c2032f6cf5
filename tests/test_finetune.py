import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from restpg_dspy.errors import UsageError
from restpg_dspy.training import LoRATrainingConfig, NonFiniteLossError, assistant_token_losses
from restpg_dspy.training.data import TrainingDataError
from restpg_dspy.training.trainer import trainer_classes

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


def test_the_same_training_run_again_is_served_its_published_adapter(tiny_lm, tmp_path, monkeypatch):
    import restpg_dspy.training.trainer as trainer

    rows = [chat("Largest animal?"), chat("Fastest bird?", "peregrine falcon")]
    first, tuned = train(tiny_lm, rows, tmp_path, max_steps=3)
    fits = []

    def no_training(job, tokenizer=None):
        fits.append(job)
        raise AssertionError("trained again")

    monkeypatch.setattr(trainer, "fit", no_training)
    again, served = train(tiny_lm, rows, tmp_path, max_steps=3)
    assert served.model == tuned.model and again.log == first.log and fits == []

    with pytest.raises(AssertionError, match="trained again"):  # other rows are another training
        train(tiny_lm, [*rows, chat("Tallest tree?", "redwood")], tmp_path, max_steps=3)
    shutil.rmtree(first.log["adapter"])  # an adapter deleted since is trained again
    with pytest.raises(AssertionError, match="trained again"):
        train(tiny_lm, rows, tmp_path, max_steps=3)
    assert len(fits) == 2


def test_a_job_is_the_same_wherever_it_publishes_and_another_on_new_base_weights():
    from restpg_dspy.training import TrainingJobSpec

    def job(output_dir, fingerprint):
        config = LoRATrainingConfig.from_kwargs({"output_dir": output_dir, "max_steps": 3})
        return TrainingJobSpec("base", "cpu", [{"input_ids": [1, 2]}], config, None, "", base_fingerprint=fingerprint)

    assert job("a", "f1").key() == job("b", "f1").key()
    assert job("a", "f1").key() != job("a", "f2").key()  # new weights in the same folder: neither resumed nor served


def test_zero_weights_leave_the_adapter_untrained(tiny_lm, tmp_path):
    job, _ = train(tiny_lm, [chat("Largest animal?", weight=0.0)] * 4, tmp_path, max_steps=3)
    assert lora_b_norm(job) == 0.0
    job, _ = train(tiny_lm, [chat("Largest animal?", weight=1.0)] * 4, tmp_path, max_steps=3)
    assert lora_b_norm(job) > 0.0


def reference_setup(tiny_model_dir, tmp_path, accumulation):
    """A LoRA model with non-zero adapter weights, its exact copy, and our trainer around the first one."""
    import copy

    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = LoRATrainingConfig(r=4, lora_dropout=0.0, gradient_accumulation_steps=accumulation)
    config.lora_args = {"init_lora_weights": False}  # B != 0: every LoRA weight gets a gradient
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config.lora_config())
    reference = copy.deepcopy(model)
    trainer_class, _ = trainer_classes()
    trainer = trainer_class(
        model=model,
        args=config.sft_config(tmp_path / "trainer", use_cpu=True, bf16=False),
        train_dataset=Dataset.from_list([{"input_ids": [1, 2], "labels": [-100, 2], "weight": 1.0}]),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        data_collator=lambda batch: batch,
    )
    return trainer, model, reference


def rows_batch(rows):
    return {
        "input_ids": torch.tensor([r[0] for r in rows]),
        "attention_mask": torch.tensor([r[1] for r in rows]),
        "labels": torch.tensor([r[2] for r in rows]),
        "weight": torch.tensor([r[3] for r in rows]),
    }


# (input ids, attention mask, labels, weight): 3 + 2 + 4 + 1 = 10 trained next-token targets in all.
ROWS = [
    ([5, 6, 7, 8, 9, 10], [1] * 6, [-100, -100, -100, 8, 9, 10], 1.0),
    ([11, 12, 13, 14, 0, 0], [1, 1, 1, 1, 0, 0], [-100, -100, 13, 14, -100, -100], 0.5),
    ([15, 16, 17, 18, 19, 20], [1] * 6, [-100, 16, 17, 18, 19, -100], 2.0),
    ([21, 22, 23, 24, 25, 26], [1] * 6, [-100, -100, -100, -100, -100, 26], 0.0),
]


def hand_computed(reference):
    """sum over rows of weight x (sum of that row's token cross-entropies) / all trained tokens, and its gradients."""
    total = 0.0
    for ids, mask, labels, weight in ROWS:
        logits = reference(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask])).logits[0, :-1]
        targets = torch.tensor(labels[1:])
        trained = targets.ne(-100)
        total = total + weight * torch.nn.functional.cross_entropy(logits[trained], targets[trained], reduction="sum")
    loss = total / 10
    loss.backward()
    grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("accumulation", [1, 2])
def test_weighted_loss_and_gradients_equal_a_hand_computed_reference(tiny_model_dir, tmp_path, accumulation):
    trainer, model, reference = reference_setup(tiny_model_dir, tmp_path, accumulation)
    expected_loss, expected_grads = hand_computed(reference)
    micro_batches = [rows_batch(ROWS)] if accumulation == 1 else [rows_batch(ROWS[:2]), rows_batch(ROWS[2:])]
    counted = trainer._get_num_items_in_batch(micro_batches, torch.device("cpu"))
    assert int(counted) == 10  # the Trainer counts the trained tokens of the whole step, as the loss needs
    loss = sum(trainer.training_step(model, batch, num_items_in_batch=counted) for batch in micro_batches)
    assert torch.isclose(loss, expected_loss, rtol=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], rtol=1e-3, atol=1e-5), name


def test_losses_from_kept_logits_equal_full_logits(tiny_engine):
    model = tiny_engine.loaded.model
    labels = torch.tensor([[-100, -100, -100, 5, 6, 7], [-100, -100, 8, 9, -100, -100]], device=model.device)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], device=model.device)
    inputs = {"input_ids": labels.clamp(min=3), "attention_mask": mask}
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


def test_an_adapter_trained_over_another_is_published_as_one_adapter_of_both(tiny_lm, tmp_path):
    shared_job, shared = train(tiny_lm, [chat("Largest animal?")] * 2, tmp_path, max_steps=2)
    rows = [chat("Largest animal?", "sperm whale")] * 2
    job, personal = train(shared, rows, tmp_path, max_steps=30, r=2, lora_alpha=4, stack_on="adapter")
    assert job.log["stacked_on"] == shared_job.log["adapter"]
    config = json.loads(Path(job.log["adapter"], "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8 + 2, 8 + 2)
    assert personal.model != shared.model and personal.model.startswith(tiny_lm.model + "+lora-")
    assert personal("Largest animal?", max_tokens=4)[0].startswith("sperm whale")
    # The same job again (the adapter below named by its content) is served what it published.
    again, _ = train(shared, rows, tmp_path, max_steps=30, r=2, lora_alpha=4, stack_on=shared_job.log["adapter"])
    assert again.log["adapter"] == job.log["adapter"]
    with pytest.raises(ValueError, match="needs an LM that serves an adapter"):
        train(tiny_lm, rows, tmp_path, stack_on="adapter")
    with pytest.raises(ValueError, match="cannot also continue"):
        train(shared, rows, tmp_path, stack_on="adapter", start_from="adapter")


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
    passed = LoRATrainingConfig.from_kwargs({"adam_beta2": 0.95, "use_rslora": True, "r": 4})
    assert passed.sft_args == {"adam_beta2": 0.95} and passed.lora_args == {"use_rslora": True} and passed.r == 4


def test_non_finite_loss_publishes_nothing(tiny_lm, tmp_path):
    out = tmp_path / "adapters"
    with pytest.raises(NonFiniteLossError, match="no adapter was published"):
        train(tiny_lm, [chat("Largest animal?")] * 4, tmp_path, learning_rate=1e30, max_grad_norm=1e30, max_steps=6)
    assert [p for p in out.iterdir()] == []


def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_adapter(tiny_lm, tmp_path, monkeypatch):
    import restpg_dspy.training.trainer as trainer

    rows = [chat("Largest animal?"), chat("Fastest bird?", "peregrine falcon"), chat("Tallest tree?", "redwood")]
    settings = {"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 2}  # dropout on: random states matter
    whole, uninterrupted = train(tiny_lm, rows, tmp_path / "whole", **settings)
    published = [p for p in (tmp_path / "whole" / "adapters").iterdir() if not p.name.startswith(".trained-")]
    assert whole.log["resumed_at_step"] == 0 and published == [Path(whole.log["adapter"])]  # no checkpoints are left

    trainer_class, progress_bar = trainer.trainer_classes()

    class Killed(Exception):
        pass

    class Interrupt(progress_bar):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise Killed
            return super().on_step_end(args, state, control, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "trainer_classes", lambda: (trainer_class, Interrupt))
        with pytest.raises(Killed):
            train(tiny_lm, rows, tmp_path / "cut", **settings)
    (kept,) = (tmp_path / "cut" / "adapters").glob(".checkpoints-*")
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-4"]
    (kept / "checkpoint-6").mkdir()  # a checkpoint whose writing was cut off is passed over
    (kept / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')
    resumed, again = train(tiny_lm, rows, tmp_path / "cut", **settings)
    assert resumed.log["resumed_at_step"] == 4 and resumed.log["steps"] == 6
    assert again.model == uninterrupted.model  # the same weights, to the hash
    assert not kept.exists()


def test_checkpoints_can_be_turned_off_and_not_made_negative(tiny_lm, tmp_path):
    job, _ = train(tiny_lm, [chat("Largest animal?")] * 2, tmp_path, max_steps=2, save_steps=0)
    assert job.log["resumed_at_step"] == 0
    with pytest.raises(ValueError, match="save_steps must be >= 0"):
        LoRATrainingConfig.from_kwargs({"save_steps": -1})


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_lm, tiny_engine, tmp_path):
    if tiny_engine.loaded.device.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip("two training processes on a GPU need two GPUs")
    rows = [
        chat(q, a)
        for q, a in [
            ("Largest animal?", "blue whale"),
            ("Fastest bird?", "peregrine falcon"),
            ("Tallest tree?", "coast redwood"),
            ("Oldest tree?", "bristlecone pine"),
        ]
    ]
    common = {"lora_dropout": 0.0, "max_steps": 3, "learning_rate": 1e-2, "r": 4}
    one, _ = train(tiny_lm, rows, tmp_path / "one", per_device_train_batch_size=4, **common)
    two, _ = train(tiny_lm, rows, tmp_path / "two", per_device_train_batch_size=2, num_processes=2, **common)
    assert two.log["steps"] == one.log["steps"] == 3
    assert two.log["losses"] == pytest.approx(one.log["losses"], rel=1e-3)
    assert one.log["losses"][-1] < one.log["losses"][0]  # the steps really trained


def test_more_processes_than_gpus_are_refused_before_training(tiny_lm, tiny_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_engine, "loaded", dataclasses.replace(tiny_engine.loaded, device="cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match=r"num_processes=2 trains one process per GPU, but this machine has 1"):
        train(tiny_lm, [chat("Largest animal?")], tmp_path, num_processes=2)
    assert not (tmp_path / "adapters").exists()


@pytest.mark.slow
def test_an_accelerate_config_launches_the_training_through_accelerate(tiny_lm, tiny_engine, tmp_path):
    config = tmp_path / "accelerate.yaml"
    on_cpu = tiny_engine.loaded.device == "cpu"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\nnum_processes: 1\n"
        f"use_cpu: {str(on_cpu).lower()}\nmixed_precision: 'no'\n"
    )
    rows = [chat("Largest animal?")] * 4
    common = {"lora_dropout": 0.0, "max_steps": 2, "learning_rate": 1e-2, "r": 4}
    here, tuned_here = train(tiny_lm, rows, tmp_path / "here", **common)
    launched, tuned_launched = train(tiny_lm, rows, tmp_path / "launched", accelerate_config=str(config), **common)
    assert launched.log["config"]["accelerate_config"] == str(config)
    assert launched.log["losses"] == pytest.approx(here.log["losses"], rel=1e-4)
    assert tuned_launched.model == tuned_here.model  # the same adapter, trained in the launched process


@pytest.mark.slow
def test_an_accelerate_config_that_asks_for_the_cpu_trains_there_whatever_the_model_serves_on(
    tiny_lm, tiny_engine, tmp_path
):
    if tiny_engine.loaded.device == "cpu":
        pytest.skip("with the model on the CPU this is the launch test above, which compares the losses too")
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\nnum_processes: 1\n"
        "use_cpu: true\nmixed_precision: 'no'\n"
    )
    rows = [chat("Largest animal?")] * 4
    job, tuned = train(tiny_lm, rows, tmp_path, accelerate_config=str(config), max_steps=2, r=4)
    assert job.log["steps"] == 2 and all(math.isfinite(loss) for loss in job.log["losses"])
    assert lora_b_norm(job) > 0 and tuned.model.startswith(tiny_lm.model + "+lora-")


# --- memory plan ----------------------------------------------------------------------------------------------


def budget_between(tiny_engine, rows, low_rows):
    """A budget that fits ``low_rows`` rows per pass with checkpointing, but neither one more row nor the whole
    batch without it (the plan's own estimate, on the rows as the training tokenizes them)."""
    from restpg_dspy.training.data import tokenize_rows
    from restpg_dspy.training.memory_plan import estimate_gib

    loaded = tiny_engine.loaded
    tokenized, _ = tokenize_rows(loaded.tokenizer, rows, 1024)
    longest = max(len(r.input_ids) for r in tokenized)
    first = min(next(i for i, label in enumerate(r.labels) if label != -100) for r in tokenized)
    settings = {
        "parameters": sum(p.numel() for name, p in loaded.model.named_parameters() if "lora_" not in name),
        "longest_row": longest,
        "trained_tokens": longest - first,
    }
    low = estimate_gib(loaded.model.config, rows=low_rows, checkpointing=True, **settings)
    high = estimate_gib(loaded.model.config, rows=low_rows + 1, checkpointing=True, **settings)
    assert estimate_gib(loaded.model.config, rows=len(rows), checkpointing=False, **settings) > high
    return (low + high) / 2


def test_micro_batches_train_like_the_whole_batch_within_float_tolerance(tiny_lm, tiny_engine, tmp_path):
    rows = [chat(q, a) for q, a in [("Largest animal?", "blue whale"), ("Fastest bird?", "peregrine falcon")] * 2]
    common = {"lora_dropout": 0.0, "max_steps": 3, "learning_rate": 1e-2, "r": 4, "per_device_train_batch_size": 4}
    whole, _ = train(tiny_lm, rows, tmp_path / "whole", memory_budget_gib=None, **common)
    budget = budget_between(tiny_engine, rows, low_rows=2)
    split, _ = train(tiny_lm, rows, tmp_path / "split", memory_budget_gib=budget, **common)
    assert split.log["memory_plan"] == {**split.log["memory_plan"], "micro_batch_size": 2, "accumulation": 2}
    assert split.log["memory_plan"]["gradient_checkpointing"]
    assert whole.log["memory_plan"] is None and split.log["steps"] == whole.log["steps"] == 3
    assert split.log["losses"] == pytest.approx(whole.log["losses"], rel=1e-4)
    first, second = (load_file(f"{job.log['adapter']}/adapter_model.safetensors") for job in (whole, split))
    assert all(torch.allclose(first[name], second[name], atol=1e-5) for name in first)


def test_a_planned_job_is_the_same_job_whether_or_not_the_served_model_carries_adapters(
    tiny_lm, tiny_engine, tiny_model_dir, tmp_path
):
    from tests.conftest import save_random_adapter

    rows = [chat(q, a) for q, a in [("Largest animal?", "blue whale"), ("Fastest bird?", "peregrine falcon")] * 2]
    common = {"max_steps": 2, "r": 4, "per_device_train_batch_size": 4}
    budget = budget_between(tiny_engine, rows, low_rows=2)
    first, _ = train(tiny_lm, rows, tmp_path, memory_budget_gib=budget, **common)
    served = save_random_adapter(tiny_model_dir, tmp_path / "served", seed=9)
    tiny_lm.copy(model=tiny_engine.register_adapter(served))("hi")  # serving it injects LoRA layers
    assert any("lora_" in name for name, _ in tiny_engine.loaded.model.named_parameters())
    again, _ = train(tiny_lm, rows, tmp_path, memory_budget_gib=budget, **common)
    assert again.log == first.log  # the same plan and key: served the adapter trained first, not trained again
    assert len(list((tmp_path / "adapters").glob(".trained-*"))) == 1


def test_a_training_that_cannot_fit_is_refused_before_it_starts(tiny_lm, tmp_path):
    with pytest.raises(UsageError, match=r"over memory_budget_gib=0\.01: lower max_length, or raise memory_budget_gib"):
        train(tiny_lm, [chat("Largest animal?")], tmp_path, memory_budget_gib=0.01)
    assert not list(tmp_path.glob("adapters/*lora*"))  # nothing trained, nothing published
    with pytest.raises(UsageError, match="memory_budget_gib must be > 0"):
        LoRATrainingConfig.from_kwargs({"memory_budget_gib": 0})


def test_the_plan_checkpoints_before_it_splits_the_batch():
    from types import SimpleNamespace

    from restpg_dspy.training.memory_plan import plan_memory

    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    plan = {"parameters": 135e6, "batch_size": 8, "trained_tokens": 300}
    assert plan_memory(smol, longest_row=128, budget_gib=8.0, **plan).gradient_checkpointing is False
    roomy = plan_memory(smol, longest_row=1024, budget_gib=8.0, **plan)
    assert (roomy.micro_batch_size, roomy.accumulation, roomy.gradient_checkpointing) == (8, 1, True)
    tight = plan_memory(smol, longest_row=1024, budget_gib=4.0, **plan)
    assert tight.micro_batch_size * tight.accumulation == 8 and tight.micro_batch_size < 8
    assert tight.estimated_gib <= 4.0 < roomy.estimated_gib


def test_a_bfloat16_training_plans_for_two_byte_activations():
    from types import SimpleNamespace

    from restpg_dspy.training.memory_plan import plan_memory

    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    demo_rows = {"parameters": 135e6, "batch_size": 8, "longest_row": 400, "trained_tokens": 120, "budget_gib": 8.0}
    assert plan_memory(smol, **demo_rows).gradient_checkpointing is True
    half = plan_memory(smol, dtype="bfloat16", **demo_rows)
    assert (half.micro_batch_size, half.gradient_checkpointing) == (8, False)
    # Measured (benchmarks/training_memory.py --vary checkpointing --dtype bfloat16): 3.15 GiB at 400 tokens.
    assert 3.15 < half.estimated_gib < 8.0


def test_bfloat16_base_weights_train_a_float32_adapter_on_the_cpu(tiny_lm, tmp_path, monkeypatch):
    from peft.tuners.tuners_utils import BaseTunerLayer

    cast, original_cast = [], BaseTunerLayer._cast_input_dtype

    def recording_cast(self, x, dtype):
        result = original_cast(self, x, dtype)
        if x is not None and result.dtype != x.dtype:
            cast.append((x.dtype, result.dtype))
        return result

    monkeypatch.setattr(BaseTunerLayer, "_cast_input_dtype", recording_cast)
    question = "What is the largest animal?"
    job, tuned = train(tiny_lm, [chat(question)] * 4, tmp_path, max_steps=40, dtype="bfloat16")
    assert cast == []  # the LoRA layers computed in bfloat16 under autocast, no activation went to float32 and back
    weights = load_file(f"{job.log['adapter']}/adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # the served base model is float32: so is the adapter
    assert job.log["losses"][-1] < job.log["losses"][0] / 4
    assert tuned(question, max_tokens=4)[0].startswith(TARGET)
    _, in_float32 = train(tiny_lm, [chat(question)] * 4, tmp_path, max_steps=40)
    assert in_float32.model != tuned.model  # the dtype is part of the training job, so of the adapter's id
