import json
import subprocess
import sys

import dspy
import pytest
from dspy.lm15 import Message, Response, ServerError, TextPart, Usage

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.evals import LLMJudge, rouge_1, rouge_l
from restpg_dspy.optimizers import RESTPG, SFT, ReSTEM, RunDirConflict, SFTWithReasoning
from restpg_dspy.programs import PersonalizedWriter, RAGWriter
from restpg_dspy.retrieval import BM25

TRAIN = {"max_steps": 2, "learning_rate": 1e-2, "r": 4}


def sample(example_id, index, reward, text=None):
    text = text or f"answer {index}"
    return {
        "id": example_id,
        "index": index,
        "reward": reward,
        "trace": [{"predictor": "write", "outputs": {"response": text}}],
    }


@pytest.fixture
def trainset():
    return synthetic("train", seed=0, users=3, requests_per_user=1)


@pytest.fixture
def writer(tiny_lm):
    program = PersonalizedWriter(retriever=BM25(k=2))
    program.set_lm(tiny_lm.copy(max_tokens=8))
    return program


def optimizer(run_dir, **kwargs):
    settings = {"rounds": 1, "samples_per_input": 3, "train_kwargs": TRAIN, "num_threads": 8, "verbose": False}
    return RESTPG(run_dir=str(run_dir), **{**settings, **kwargs})


# --- selection -------------------------------------------------------------------------------------------------


def test_threshold_keeps_only_good_samples_and_normalises_weights():
    samples = [sample("a", 0, 0.9), sample("a", 1, 0.2), sample("a", 2, 0.5), sample("b", 0, 0.1)]
    kept = RESTPG(threshold=0.5)._select(samples)
    assert [(s["id"], s["reward"]) for s in kept] == [("a", 0.9), ("a", 0.5)]
    assert [round(s["weight"], 4) for s in kept] == [round(0.9 / 0.7, 4), round(0.5 / 0.7, 4)]
    assert all(s["weight"] == 1.0 for s in RESTPG(threshold=0.5, reward_weighted=False)._select(samples))


def test_cap_top_fraction_and_duplicates_per_input():
    samples = [sample("a", i, r) for i, r in enumerate([0.1, 0.8, 0.7, 0.6, 0.5])]
    assert [s["reward"] for s in RESTPG(max_per_input=2)._select(samples)] == [0.8, 0.7]
    assert [s["reward"] for s in RESTPG(top_fraction=0.4)._select(samples)] == [0.8, 0.7]
    duplicates = [sample("a", 0, 0.9, "same"), sample("a", 1, 0.9, "same"), sample("a", 2, 0.3, "other")]
    assert [s["index"] for s in RESTPG()._select(duplicates)] == [0, 2]
    failed = [{"id": "a", "index": 0, "reward": None, "error": "metric failed"}]
    assert RESTPG()._select(failed) == []


def test_rounds_report_how_many_distinct_traces_and_rewards_each_input_drew():
    memorised = [sample("a", i, 1.0, "same") for i in range(4)] + [sample("b", i, 1.0, "same") for i in range(4)]
    optimizer = RESTPG()
    stats = optimizer._round_stats(memorised, optimizer._select(memorised), [])
    assert stats["distinct_per_input"] == 1.0 and stats["reward_spread_rate"] == 0.0
    assert "option_spread_rate" not in stats  # no example offers options
    exploring = [sample("a", i, 0.5, f"answer {i % 3}") for i in range(4)] + [sample("b", 0, 0.5)]
    stats = optimizer._round_stats(exploring, optimizer._select(exploring), [])
    assert stats["distinct_per_input"] == 2.0 and stats["reward_spread_rate"] == 0.0  # (3 + 1) / 2; equal rewards
    spread = [sample("a", i, 0.25 * i, f"answer {i}") for i in range(4)] + [sample("b", 0, 0.5)]
    assert optimizer._round_stats(spread, optimizer._select(spread), [])["reward_spread_rate"] == 0.5


def test_option_spread_counts_inputs_whose_draws_chose_different_options():
    options = ["the quiet inn by the lake", "the cheap hostel downtown"]
    examples = [dspy.Example(id=name, options=options, answer=options[0]) for name in "abc"]
    samples = [
        # a: two wordings of the same choice (the rewards differ, the choice does not)
        sample("a", 0, 0.9, "I pick the quiet inn by the lake."),
        sample("a", 1, 0.7, "The lake inn, quiet and nice."),
        # b: one draw names the inn, another the hostel
        sample("b", 0, 0.9, "I pick the quiet inn by the lake."),
        sample("b", 1, 0.5, "I pick the cheap hostel downtown."),
        # c: one names an option, one names none
        sample("c", 0, 0.9, "I pick the quiet inn by the lake."),
        sample("c", 1, 0.1, "No idea."),
    ]
    stats = RESTPG()._round_stats(samples, RESTPG()._select(samples), examples)
    assert stats["reward_spread_rate"] == 1.0 and stats["option_spread_rate"] == round(2 / 3, 4)


def test_reasoning_length_penalty_prefers_shorter_reasoning_among_good_answers():
    samples = [
        {**sample("a", 0, 0.9, "long"), "reasoning_tokens": 40},
        {**sample("a", 1, 0.8, "short"), "reasoning_tokens": 10},
        {**sample("a", 2, 0.5, "other"), "reasoning_tokens": 5},
    ]
    assert [s["index"] for s in RESTPG(max_per_input=1)._select(samples)] == [0]
    penalised = RESTPG(max_per_input=2, reasoning_length_target=20, reasoning_length_penalty=0.2)._select(samples)
    assert [(s["index"], round(s["score"], 4)) for s in penalised] == [(1, 0.8), (0, 0.7)]
    assert all(s["reward"] in (0.9, 0.8) for s in penalised)  # the reward itself is kept as measured


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reasoning_max_tokens": 0}, "reasoning_max_tokens must be a positive number of tokens"),
        ({"response_max_tokens": -1}, "response_max_tokens must be a positive number of tokens"),
        ({"reasoning_length_penalty": 0.5}, "needs a reasoning_length_target"),
    ],
)
def test_bad_budgets_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RESTPG(**settings)


# --- a whole compile on the tiny model ------------------------------------------------------------------------


def test_compile_writes_a_readable_run_and_trains_each_stage(writer, trainset, tmp_path):
    compiled = optimizer(tmp_path, rounds=2).compile(writer, trainset=trainset, valset=trainset[:2])
    assert [entry["stage"] for entry in compiled.restpg_history] == ["sft", "round_1", "round_2"]
    models = {entry["model"] for entry in compiled.restpg_history}
    assert len(models) == 3 and all(m.startswith(writer.reason.lm.model + "+lora-") for m in models)
    assert compiled.write.lm.model in models and "val_score" in compiled.restpg_history[0]

    reasoning = [json.loads(line) for line in (tmp_path / "teacher_reasoning.jsonl").read_text().splitlines()]
    assert {row["id"] for row in reasoning} == {e.id for e in trainset}
    sft_rows = [json.loads(line) for line in (tmp_path / "sft/rows.jsonl").read_text().splitlines()]
    assert len(sft_rows) == 2 * len(trainset)  # a reasoning row and a response row per example
    gold = {e.output for e in trainset}
    assert sum(row["messages"][-1]["content"] in gold for row in sft_rows) == len(trainset)

    samples = [json.loads(line) for line in (tmp_path / "round_1/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * len(trainset)
    assert len({s["seed"] for s in samples}) == len(samples)  # every sample has its own seed and rollout id
    responses = {json.dumps(s["trace"][-1]["outputs"]) for s in samples}
    assert len(responses) > len(trainset)  # samples of one input differ
    assert all(s["trace"][0]["predictor"] == "reason" and s["trace"][1]["predictor"] == "write" for s in samples)

    kept = [json.loads(line) for line in (tmp_path / "round_1/kept.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "round_1/rows.jsonl").read_text().splitlines()]
    assert sorted(r["weight"] for r in rows) == sorted(k["weight"] for k in kept for _ in range(2))
    training = json.loads((tmp_path / "round_2/model.json").read_text())["training"]
    assert training["start_from"] == "base"
    metrics = json.loads((tmp_path / "round_1/metrics.json").read_text())
    fields = {"reward_mean", "reward_median", "reward_p90", "keep_rate", "inputs_without_kept", "truncation_rate"}
    assert fields | {"loop_rate"} <= set(metrics) and 0.0 <= metrics["loop_rate"] <= 1.0
    assert 1 < metrics["distinct_per_input"] <= 3


def test_continue_training_starts_from_the_previous_adapter(writer, trainset, tmp_path):
    optimizer(tmp_path, restart_from_base=False).compile(writer, trainset=trainset)
    sft = json.loads((tmp_path / "sft/model.json").read_text())
    round_1 = json.loads((tmp_path / "round_1/model.json").read_text())
    assert round_1["training"]["start_from"] == sft["adapter"]


def test_the_sft_stage_can_train_on_its_own_budget(writer, trainset, tmp_path):
    optimizer(tmp_path, sft_train_kwargs={"max_steps": 1, "learning_rate": 1e-3}).compile(writer, trainset=trainset)
    sft = json.loads((tmp_path / "sft/model.json").read_text())["training"]
    round_1 = json.loads((tmp_path / "round_1/model.json").read_text())["training"]
    assert (sft["steps"], sft["config"]["learning_rate"], sft["config"]["r"]) == (1, 1e-3, TRAIN["r"])
    assert (round_1["steps"], round_1["config"]["learning_rate"]) == (2, TRAIN["learning_rate"])
    with pytest.raises(RunDirConflict, match="sft_train_kwargs"):
        optimizer(tmp_path, sft_train_kwargs={"max_steps": 2}).compile(writer, trainset=trainset)


def test_the_sft_stage_can_leave_users_for_the_e_step_to_meet_first(writer, tmp_path):
    trainset = synthetic("train", seed=0, users=4, requests_per_user=1)
    optimizer(tmp_path, sft_fraction=0.5, samples_per_input=2).compile(writer, trainset=trainset)
    chosen = json.loads((tmp_path / "sft/examples.json").read_text())
    assert len(chosen["users"]) == 2 and len(chosen["ids"]) == 2
    reasoning = [json.loads(line) for line in (tmp_path / "teacher_reasoning.jsonl").read_text().splitlines()]
    assert {row["id"] for row in reasoning} == set(chosen["ids"])  # the teacher explains only what SFT trains on
    assert len((tmp_path / "sft/rows.jsonl").read_text().splitlines()) == 2 * 2
    samples = [json.loads(line) for line in (tmp_path / "round_1/samples.jsonl").read_text().splitlines()]
    assert {s["id"] for s in samples} == {e.id for e in trainset}  # the E-step samples every input
    again = RESTPG(sft_fraction=0.5)._sft_examples(trainset)  # the choice is the seed's, not the run's
    assert [e.id for e in again] == chosen["ids"]
    assert [e.id for e in RESTPG(sft_fraction=0.5, seed=1)._sft_examples(trainset)] != chosen["ids"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"sft_fraction": 0}, "sft_fraction must be in"), ({"sft_fraction": 0.5, "sft": False}, "needs sft=True")],
)
def test_bad_sft_fractions_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RESTPG(**settings)


def test_a_run_written_before_a_setting_existed_resumes_at_its_default(writer, trainset, tmp_path):
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "sft_train_kwargs"}))
    sft = (tmp_path / "sft/model.json").read_text()
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)
    assert (tmp_path / "sft/model.json").read_text() == sft  # resumed, nothing trained again


class Interrupted(BaseException):
    """Stands for a crash or Ctrl-C in the middle of a round."""


def test_resume_after_a_crash_mid_round_redoes_nothing_finished(writer, trainset, tmp_path):
    calls = {"n": 0}

    def crashing_metric(example, prediction, trace=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Interrupted()
        return rouge_l(example, prediction)

    crashing_metric.__qualname__ = "metric"
    with pytest.raises(Interrupted):
        optimizer(tmp_path, metric=crashing_metric, num_threads=1).compile(writer, trainset=trainset)
    finished = (tmp_path / "round_1/samples.jsonl").read_text().splitlines()
    assert 4 <= len(finished) < 3 * len(trainset)  # a worker may finish one more before the pool stops
    teacher_before = (tmp_path / "teacher_reasoning.jsonl").read_text()
    sft_before = (tmp_path / "sft/model.json").stat().st_mtime_ns

    def counting_metric(example, prediction, trace=None):
        calls["n"] += 1
        return rouge_l(example, prediction)

    counting_metric.__qualname__ = "metric"
    calls["n"] = 0
    compiled = optimizer(tmp_path, metric=counting_metric).compile(writer, trainset=trainset)
    assert calls["n"] == 3 * len(trainset) - len(finished)  # only the samples that had not finished
    assert (tmp_path / "teacher_reasoning.jsonl").read_text() == teacher_before
    assert (tmp_path / "sft/model.json").stat().st_mtime_ns == sft_before
    samples = (tmp_path / "round_1/samples.jsonl").read_text().splitlines()
    assert samples[: len(finished)] == finished and len(samples) == 3 * len(trainset)
    assert compiled.restpg_history[-1]["stage"] == "round_1"


def test_a_run_directory_without_its_adapters_trains_again_only_the_stages_a_request_needs(
    writer, trainset, tmp_path, monkeypatch
):
    import shutil

    from dspy.clients.cache import Cache

    from restpg_dspy.training import trainer

    def empty_cache():  # a new machine's: nothing answered before
        empty = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
        monkeypatch.setattr(dspy, "cache", empty)

    empty_cache()
    first = optimizer(tmp_path / "run").compile(writer, trainset=trainset)
    run = tmp_path / "run"
    samples = (run / "round_1" / "samples.jsonl").read_text()
    trainings = []
    fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda job, tokenizer=None: trainings.append(job) or fit(job, tokenizer))

    # A new machine: the run directory's files came along, its adapters did not. Every stage is recorded, so the
    # resumed compile trains nothing; the last stage is trained again, from its rows, when a request needs it.
    shutil.rmtree(run / "adapters")
    resumed = optimizer(run).compile(writer, trainset=trainset)
    assert trainings == []
    assert [e["model"] for e in resumed.restpg_history] == [e["model"] for e in first.restpg_history]
    resumed(**trainset[0].inputs().toDict())  # a request no cache holds
    assert len(trainings) == 1 and len(list((run / "adapters").glob("*/adapter_config.json"))) == 1

    # Killed after the SFT stage on the old machine: round 1 must be sampled, and no cache holds its samples here,
    # so the SFT stage is trained again first.
    empty_cache()
    shutil.rmtree(run / "adapters")
    shutil.rmtree(run / "round_1")
    trainings.clear()
    again = optimizer(run).compile(writer, trainset=trainset)
    assert len(trainings) == 2  # the SFT stage (from sft/rows.jsonl), then round 1
    # The same adapter draws the same samples (in the order the threads finished them).
    assert sorted((run / "round_1" / "samples.jsonl").read_text().splitlines()) == sorted(samples.splitlines())
    assert [e["model"] for e in again.restpg_history] == [e["model"] for e in first.restpg_history]


def test_a_different_configuration_in_the_same_run_dir_is_refused(writer, trainset, tmp_path):
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)
    with pytest.raises(RunDirConflict, match="samples_per_input"):
        optimizer(tmp_path, rounds=0, samples_per_input=5).compile(writer, trainset=trainset)


def test_a_resumed_compile_with_another_reward_is_refused_naming_both(writer, trainset, tmp_path):
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)
    with pytest.raises(RunDirConflict, match=r"metric: .*rouge_l.* in the run, .*rouge_1.* now"):
        optimizer(tmp_path, rounds=0, metric=rouge_1).compile(writer, trainset=trainset)


def test_a_run_written_before_metric_identities_is_migrated_or_refused(writer, trainset, tmp_path):
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)
    config = json.loads((tmp_path / "config.json").read_text())
    legacy = {k: v for k, v in config.items() if k != "format"}
    (tmp_path / "config.json").write_text(json.dumps({**legacy, "metric": "rouge_l"}))
    optimizer(tmp_path, rounds=0).compile(writer, trainset=trainset)  # the same function: migrated
    assert json.loads((tmp_path / "config.json").read_text()) == config
    (tmp_path / "config.json").write_text(json.dumps({**legacy, "metric": "LLMJudge"}))
    judge = LLMJudge(dspy.LM("openai/judge", cache=False))
    with pytest.raises(RunDirConflict, match=r"older restpg-dspy .* only as 'LLMJudge'"):
        optimizer(tmp_path, rounds=0, metric=judge).compile(writer, trainset=trainset)


def test_failed_samples_are_drawn_again_by_the_next_run(writer, trainset, tmp_path):
    calls = {"n": 0, "failing": trainset[0].id}

    def metric(example, prediction, trace=None):
        calls["n"] += 1
        if calls["n"] == 8:
            raise Interrupted()
        if example.id == calls["failing"]:
            raise ConnectionError("judge unreachable")
        return rouge_l(example, prediction)

    with pytest.raises(Interrupted):
        optimizer(tmp_path, metric=metric, num_threads=1).compile(writer, trainset=trainset)
    rows = [json.loads(line) for line in (tmp_path / "round_1/samples.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["reward"] is None]
    assert failed and all("ConnectionError: judge unreachable" in r["error"] for r in failed)
    calls.update(n=-100, failing=None)
    compiled = optimizer(tmp_path, metric=metric, num_threads=1).compile(writer, trainset=trainset)
    assert calls["n"] + 100 == 3 * len(trainset) - (len(rows) - len(failed))
    assert compiled.restpg_history[-1]["failed"] == 0
    retried = [json.loads(line) for line in (tmp_path / "round_1/samples.jsonl").read_text().splitlines()]
    assert {(r["id"], r["index"], r["seed"]) for r in failed} <= {(r["id"], r["index"], r["seed"]) for r in retried}


def test_validation_failures_are_counted_not_scored_as_zero(writer, trainset, tmp_path):
    failing = trainset[0].id

    def metric(example, prediction, trace=None):
        if example.id == failing:
            raise ConnectionError("judge unreachable")
        return 0.5

    compiled = optimizer(tmp_path, rounds=0, metric=metric).compile(writer, trainset=trainset, valset=trainset)
    (sft,) = compiled.restpg_history
    assert sft["val_score"] == 0.5 and sft["val_failed"] == 1


def test_round_where_nothing_passes_keeps_the_previous_model(writer, trainset, tmp_path):
    compiled = optimizer(tmp_path, threshold=2.0).compile(writer, trainset=trainset)
    sft, round_1 = compiled.restpg_history
    assert "skipped" in round_1 and compiled.write.lm.model == sft["model"]


class FlakyTeacher:
    """A teacher engine that fails on dish requests (while ``failing``) and answers the others."""

    failing = True
    calls = 0

    def complete(self, request):
        self.calls += 1
        if self.failing and "Recommend a dish" in request.messages[-1].text:
            raise ServerError("teacher unavailable")
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart("- writes warmly")]),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )

    def close(self):
        pass


def test_teacher_failures_are_retried_skipped_and_counted(writer, tmp_path):
    trainset = synthetic("train", seed=0, users=8, requests_per_user=1, task="life_facts")
    teacher = dspy.LM("flaky/teacher", engine=FlakyTeacher(), num_retries=0, cache=False)
    compiled = optimizer(tmp_path, rounds=0, teacher_retries=1).compile(writer, trainset=trainset, teacher=teacher)
    rows = [json.loads(line) for line in (tmp_path / "teacher_reasoning.jsonl").read_text().splitlines()]
    failed = [r for r in rows if "error" in r]
    dishes = [e for e in trainset if e.request.startswith("Recommend a dish")]
    assert len(failed) == len(dishes) > 0 and all(r["attempts"] == 2 for r in failed)
    assert compiled.restpg_history[0]["rows"] == 2 * (len(trainset) - len(dishes))


def test_teacher_failures_are_retried_by_the_next_run_until_sft_is_trained(writer, tmp_path):
    trainset = synthetic("train", seed=0, users=8, requests_per_user=1, task="life_facts")
    dishes = {e.id for e in trainset if e.request.startswith("Recommend a dish")}
    engine = FlakyTeacher()
    teacher = dspy.LM("flaky/teacher", engine=engine, num_retries=0, cache=False)

    def notes(run_dir):
        latest = {}
        for line in (run_dir / "teacher_reasoning.jsonl").read_text().splitlines():
            latest[json.loads(line)["id"]] = json.loads(line)
        return {i for i, row in latest.items() if "reasoning" in row}

    notes_only = optimizer(tmp_path / "notes", rounds=0, sft=False, teacher_retries=0)
    notes_only.compile(writer, trainset=trainset, teacher=teacher)
    assert notes(tmp_path / "notes") == {e.id for e in trainset} - dishes
    engine.failing = False
    notes_only.compile(writer, trainset=trainset, teacher=teacher)
    assert notes(tmp_path / "notes") == {e.id for e in trainset}

    engine.failing = True
    trained = optimizer(tmp_path / "trained", rounds=0, teacher_retries=0)
    first = trained.compile(writer, trainset=trainset, teacher=teacher).restpg_history
    engine.failing, calls = False, engine.calls
    assert trained.compile(writer, trainset=trainset, teacher=teacher).restpg_history == first
    assert engine.calls == calls  # SFT was trained without the failed examples: they are not asked again


def test_step_budgets_reach_the_samples_and_each_step_reports_its_truncation(writer, trainset, tmp_path):
    compiled = optimizer(tmp_path, reasoning_max_tokens=2, response_max_tokens=3).compile(writer, trainset=trainset)
    assert (compiled.reasoning_max_tokens, compiled.response_max_tokens) == (2, 3)
    samples = [json.loads(line) for line in (tmp_path / "round_1/samples.jsonl").read_text().splitlines()]
    assert all(0 < s["reasoning_tokens"] <= 2 for s in samples)
    # The tiny random model never stops early: both steps run out of tokens in every sample.
    assert all(s["truncated_steps"] == ["reasoning", "response"] for s in samples)
    entry = compiled.restpg_history[1]
    assert entry["reasoning_truncation_rate"] == entry["response_truncation_rate"] == 1.0
    assert entry["reasoning_tokens_mean"] == 2.0


def test_baseline_presets_fit_their_programs(writer, tiny_lm, trainset, tmp_path):
    rag = RAGWriter(retriever=BM25(k=2))
    rag.set_lm(tiny_lm.copy(max_tokens=8))
    settings = {"train_kwargs": TRAIN, "verbose": False, "samples_per_input": 2}
    sft = SFT(run_dir=str(tmp_path / "sft"), **settings).compile(rag, trainset=trainset)
    assert [e["stage"] for e in sft.restpg_history] == ["sft"]
    assert sft.restpg_history[0]["rows"] == len(trainset)
    rest_em = ReSTEM(run_dir=str(tmp_path / "em"), rounds=1, **settings).compile(rag, trainset=trainset)
    assert [e["stage"] for e in rest_em.restpg_history] == ["sft", "round_1"]
    assert not (tmp_path / "em" / "teacher_reasoning.jsonl").exists()
    with_reasoning = SFTWithReasoning(run_dir=str(tmp_path / "r"), **settings).compile(writer, trainset=trainset)
    assert with_reasoning.restpg_history[0]["rows"] == 2 * len(trainset)
    with pytest.raises(ValueError, match="needs a predictor with output 'reasoning'"):
        RESTPG(**settings).compile(rag, trainset=trainset)
    with pytest.raises(ValueError, match="cannot supervise the reasoning predictor"):
        SFT(**settings).compile(writer, trainset=trainset)


def test_bad_inputs_fail_before_any_expensive_stage(writer, trainset):
    with pytest.raises(ValueError, match="trainset is empty"):
        RESTPG().compile(writer, trainset=[])
    with pytest.raises(ValueError, match="have no LM"):
        RESTPG().compile(PersonalizedWriter(), trainset=trainset)
    fixed = PersonalizedWriter()
    fixed.set_lm(dspy.utils.DummyLM([{"reasoning": "x"}]))
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        RESTPG().compile(fixed, trainset=trainset)
    with pytest.raises(ValueError, match="has no 'output'"):
        RESTPG().compile(writer, trainset=[dspy.Example(id="x", request="r", profile=[]).with_inputs("request")])


def test_compiled_program_saves_and_loads_with_its_adapter(writer, trainset, tmp_path, tiny_model_dir):
    compiled = optimizer(tmp_path / "run", rounds=0).compile(writer, trainset=trainset)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    restored = PersonalizedWriter(retriever=BM25(k=2))
    restored.load(str(path), allow_unsafe_lm_state=True)
    assert restored.write.lm.model == compiled.write.lm.model
    example = trainset[0].inputs().toDict()
    expected = compiled(**example).response
    assert restored(**example).response == expected
    script = f"""
import json
from restpg_dspy.data import synthetic
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.retrieval import BM25
program = PersonalizedWriter(retriever=BM25(k=2))
program.load({str(path)!r}, allow_unsafe_lm_state=True)
program.set_lm(program.write.lm.copy(cache=False))  # generate for real in the new process
example = synthetic("train", seed=0, users=3, requests_per_user=1)[0]
print(json.dumps(program(**example.inputs().toDict()).response))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected  # greedy decoding reproduces the output


def test_samples_served_from_the_lm_cache_report_the_same_reasoning_length(writer, trainset, tmp_path):
    optimizer(tmp_path / "first").compile(writer, trainset=trainset)
    optimizer(tmp_path / "again").compile(writer, trainset=trainset)  # same seeds: every call comes from the cache

    def lengths(run):
        rows = [json.loads(line) for line in (run / "round_1/samples.jsonl").read_text().splitlines()]
        return {(r["id"], r["index"]): r["reasoning_tokens"] for r in rows}

    first = lengths(tmp_path / "first")
    assert lengths(tmp_path / "again") == first and all(n > 0 for n in first.values())


def test_a_separate_sampler_draws_each_round_with_that_rounds_adapter(writer, trainset, tmp_path, tiny_model_dir):
    sampler = restpg_dspy.lm(f"local:{tiny_model_dir}", max_batch_size=4, batch_window_ms=30.0, cache=False)
    engine, student_engine = sampler.engine, writer.write.lm.engine
    assert engine is not student_engine  # a second engine on the same weights
    before = engine.stats["rows"]
    compiled = optimizer(tmp_path, rounds=2).compile(writer, trainset=trainset, sampler=sampler)
    history = {entry["stage"]: entry for entry in compiled.restpg_history}
    for round_number, trained_by in ((1, "sft"), (2, "round_1")):
        rows = [
            json.loads(line) for line in (tmp_path / f"round_{round_number}/samples.jsonl").read_text().splitlines()
        ]
        adapter_id = history[trained_by]["model"]
        assert {row["model"] for row in rows} == {adapter_id}  # the previous stage's adapter
        served_as = history[f"round_{round_number}"]["sampled_with"]
        assert served_as == {"model": adapter_id, "served_as": f"lora_{adapter_id.rpartition('-')[2]}"}
        assert adapter_id not in engine.adapters  # unloaded once the round's samples were drawn
    assert engine.stats["rows"] - before == 2 * 3 * len(trainset) * 2  # rounds x samples x inputs x predictors
    assert json.loads((tmp_path / "config.json").read_text())["sampler_lm"] == sampler.model


def test_a_sampler_that_goes_down_stops_the_round_and_the_next_run_resumes(
    writer, trainset, tmp_path, tiny_model_dir, monkeypatch
):
    from dspy.lm15 import TransportError

    sampler = restpg_dspy.lm(f"local:{tiny_model_dir}", max_batch_size=4, batch_window_ms=30.0, cache=False)
    sampler = sampler.copy(num_retries=0)

    def down(job):
        raise TransportError("the vLLM server at http://gpu-box:8000/v1 cannot be reached; is it running?")

    monkeypatch.setattr(sampler.engine, "_decode", down)
    with pytest.raises(RuntimeError, match=r"every sample of round_1 failed .*cannot be reached.*compile again"):
        optimizer(tmp_path).compile(writer, trainset=trainset, sampler=sampler)
    sft = json.loads((tmp_path / "sft/model.json").read_text())
    sft_written = (tmp_path / "sft/model.json").stat().st_mtime_ns
    assert not (tmp_path / "round_1/model.json").exists()

    monkeypatch.undo()  # the server is back
    compiled = optimizer(tmp_path).compile(writer, trainset=trainset, sampler=sampler)
    history = {entry["stage"]: entry for entry in compiled.restpg_history}
    assert history["sft"]["model"] == sft["model"] and history["round_1"]["failed"] == 0
    assert (tmp_path / "sft/model.json").stat().st_mtime_ns == sft_written  # SFT was not trained again


def test_a_sampler_that_cannot_serve_adapters_is_refused(writer, trainset, tmp_path):
    with pytest.raises(ValueError, match="cannot serve the adapters restpg-dspy trains"):
        optimizer(tmp_path).compile(writer, trainset=trainset, sampler=dspy.LM("openai/gpt-4o-mini"))
