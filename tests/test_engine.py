import json
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import Config, Message, Request

import restpg_dspy
from restpg_dspy.errors import UsageError
from restpg_dspy.serving.engine import LocalEngine
from tests.conftest import save_random_adapter


def ask(lm, text, **config):
    return lm(Request(model=lm.model, messages=(Message.user(text),), config=Config(**config)))


def test_response_reports_usage_and_finish_reason(tiny_lm):
    response = ask(tiny_lm, "Say something.", max_tokens=5)
    assert response.finish_reason == "length"
    assert response.usage.output_tokens == 5 and response.usage.input_tokens > 5
    assert response.model == tiny_lm.model


def test_concurrent_calls_are_coalesced_into_batches(tiny_engine, tiny_model_dir):
    lm = restpg_dspy.lm(f"local:{tiny_model_dir}", batch_window_ms=50.0, default_max_tokens=16, cache=False)
    before = dict(tiny_engine.stats)
    barrier = threading.Barrier(8)
    results = [None] * 8

    def call(i):
        barrier.wait()
        results[i] = lm(f"Question number {i}?", max_tokens=8)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r and isinstance(r[0], str) for r in results)
    assert tiny_engine.stats["rows"] - before["rows"] == 8
    assert tiny_engine.stats["batches"] - before["batches"] < 8


def test_stats_count_the_steps_and_the_rows_that_shared_them(tiny_model_dir):
    from concurrent.futures import Future

    from restpg_dspy.serving.generation import SamplingParams
    from restpg_dspy.serving.queue import Job

    engine = LocalEngine(str(tiny_model_dir), batch_window_ms=0.0)
    prompt = engine.tokenizer("Hello there")["input_ids"]
    jobs = [Job(engine.base_id, prompt, SamplingParams(max_tokens=budget), Future()) for budget in (3, 9)]
    engine._eos = set()  # every row decodes its whole budget
    engine._run(engine.base_id, jobs)
    assert [len(job.future.result().token_ids) for job in jobs] == [3, 9]
    # 9 steps: both rows in the first 3, one row in the other 6.
    assert engine.stats == {"batches": 1, "rows": 2, "generated_tokens": 12, "steps": 9, "row_steps": 12}


def test_requests_arriving_while_a_batch_decodes_join_it_between_steps(tiny_model_dir, monkeypatch):
    from concurrent.futures import Future

    from restpg_dspy.serving import decoding
    from restpg_dspy.serving.generation import SamplingParams
    from restpg_dspy.serving.queue import Job

    engine = LocalEngine(str(tiny_model_dir), batching="continuous", max_batch_size=2)
    engine._eos = set()
    prompts = [engine.tokenizer(text)["input_ids"] for text in ("Hello there", "Hi", "A longer request than the rest")]

    def job(i):
        return Job(engine.base_id, prompts[i], SamplingParams(max_tokens=4 + i, temperature=0.7, seed=i), Future())

    first, late = [job(0)], [job(1), job(2)]
    added, add, step = [], decoding.DecodingBatch.add, decoding.DecodingBatch.step

    def counting_add(batch, prompts, *args):
        added.append(len(prompts))
        return add(batch, prompts, *args)

    def step_then_queue(batch):
        if batch.steps == 1:  # two requests arrive after the first step; the batch has room for one at a time
            for waiting in late:
                engine._queue.put(waiting)
        return step(batch)

    monkeypatch.setattr(decoding.DecodingBatch, "add", counting_add)
    monkeypatch.setattr(decoding.DecodingBatch, "step", step_then_queue)
    engine._decode_continuously(engine.base_id, list(first), {})
    assert added == [1, 1, 1] and engine.stats["batches"] == 1  # one batch; each late request joined it
    static = LocalEngine(str(tiny_model_dir), batch_window_ms=0.0)
    static._eos = set()
    alone = static._generate(static.loaded.model, [prompts[i] for i in range(3)], [j.params for j in first + late])
    assert [j.future.result().token_ids for j in first + late] == [c.token_ids for c in alone]


@pytest.mark.parametrize("max_batch_size", [3, 16])
def test_continuous_batching_answers_as_static_batching_does(tiny_model_dir, tmp_path, max_batch_size):
    from concurrent.futures import ThreadPoolExecutor

    adapter = save_random_adapter(tiny_model_dir, tmp_path / "a", seed=5)
    answers = []
    for batching in ("static", "continuous"):
        lm = restpg_dspy.lm(
            f"local:{tiny_model_dir}",
            cache=False,
            batching=batching,
            max_batch_size=max_batch_size,
            batch_window_ms=0.0,
        )
        tuned = lm.copy(model=lm.engine.register_adapter(adapter))
        calls = [
            (tuned if i % 3 == 0 else lm, f"Request {i}: tell me about rivers{'!' * i}", 3 + 2 * (i % 4), i % 2)
            for i in range(12)
        ]
        with ThreadPoolExecutor(12) as pool:
            answers.append(
                list(pool.map(lambda c: c[0](c[1], max_tokens=c[2], temperature=0.8 * c[3], seed=c[3] + 7), calls))
            )
        assert lm.engine.stats["rows"] == 12
    static, continuous = answers
    assert continuous == static
    with pytest.raises(UsageError, match="batching must be"):
        LocalEngine(str(tiny_model_dir), batching="dynamic")
    with pytest.raises(UsageError, match="batching='static' only"):
        LocalEngine(str(tiny_model_dir), batching="continuous", mixed_adapter_batches=True)


def test_dspy_cache_serves_repeated_calls_without_generating(tiny_engine, tiny_lm):
    prompt = f"Cache probe {uuid.uuid4()}"
    first = tiny_lm(prompt)
    rows = tiny_engine.stats["rows"]
    assert tiny_lm(prompt) == first
    assert tiny_engine.stats["rows"] == rows


def test_n_samples_and_rollout_ids(tiny_lm):
    hot = tiny_lm.copy(temperature=1.0, cache=False)
    prompt = f"Sample probe {uuid.uuid4()}"
    samples = hot(prompt, n=4)
    assert len(samples) == 4 and len(set(samples)) > 1
    cached = tiny_lm.copy(temperature=1.0)
    assert cached(prompt, rollout_id=7) == cached(prompt, rollout_id=7)


def test_seed_makes_sampling_repeatable_without_cache(tiny_lm):
    hot = tiny_lm.copy(temperature=1.0, cache=False)
    prompt = f"Seed probe {uuid.uuid4()}"
    assert hot(prompt, seed=11) == hot(prompt, seed=11)
    assert len({hot(prompt, seed=s)[0] for s in range(4)}) > 1


def test_predict_runs_through_the_engine(tiny_lm):
    lm = tiny_lm.copy(cache=False)
    # A random tiny model cannot follow the format: DSPy tries its ChatAdapter, then its JSON fallback, and refuses
    # the engine's completion of the last try, which it quotes.
    with (
        dspy.context(lm=lm, adapter=dspy.ChatAdapter()),
        pytest.raises(dspy.utils.exceptions.AdapterParseError) as refused,
    ):
        dspy.Predict("question -> answer")(question="Why?")
    chat, json_fallback = lm.history
    assert chat["messages"][-1]["content"].startswith("[[ ## question ## ]]\nWhy?")
    assert "Respond with a JSON object" in json_fallback["messages"][-1]["content"]
    completion = json_fallback["outputs"][0]
    assert completion.strip() and completion.strip() in str(refused.value)


def test_prompt_longer_than_context_is_refused(tiny_lm):
    with pytest.raises(Exception, match="does not fit the model's context"):
        ask(tiny_lm, "word " * 1200)


def test_max_tokens_are_clamped_to_the_context(tiny_lm):
    response = ask(tiny_lm, "word " * 900, max_tokens=500)
    assert response.usage.input_tokens + response.usage.output_tokens <= 1024
    assert response.finish_reason == "length"


def test_unknown_model_id_is_refused(tiny_lm):
    with pytest.raises(Exception, match="not served by this engine"):
        tiny_lm.copy(model="local/another-model")("hi")


def test_unknown_adapter_hash_is_refused(tiny_lm):
    with pytest.raises(Exception, match="adapter 000000000000"):
        tiny_lm.copy(model=tiny_lm.model + "+lora-000000000000")("hi")


def test_engine_state_round_trips(tiny_engine):
    state = tiny_engine.dump_state()
    assert LocalEngine.load_state(state) is tiny_engine


def test_a_saved_engine_leaves_out_and_skips_adapters_deleted_since(tiny_engine, tiny_model_dir, tmp_path, caplog):
    gone = save_random_adapter(tiny_model_dir, tmp_path / "gone", seed=1)
    kept = save_random_adapter(tiny_model_dir, tmp_path / "kept", seed=2)
    gone_id, kept_id = tiny_engine.register_adapter(gone), tiny_engine.register_adapter(kept)
    try:
        saved_before = tiny_engine.dump_state()
        shutil.rmtree(gone)
        assert saved_before["adapters"][gone_id] == str(gone.resolve())
        assert gone_id not in tiny_engine.dump_state()["adapters"]
        with caplog.at_level(logging.WARNING, logger="restpg_dspy.serving"):
            assert LocalEngine.load_state(saved_before) is tiny_engine  # the program saved earlier still loads
        assert gone_id in caplog.text and "no longer exists" in caplog.text
        assert tiny_engine.adapter_path(kept_id) == kept.resolve()
    finally:
        tiny_engine.unload_adapter(gone_id)
        tiny_engine.unload_adapter(kept_id)


def test_a_deferred_adapter_is_made_on_the_first_request_that_needs_it(tiny_engine, tiny_lm, tiny_model_dir, tmp_path):
    import hashlib

    from restpg_dspy.serving import adapter_hash

    made = save_random_adapter(tiny_model_dir, tmp_path / "made", seed=3)
    model_id = f"{tiny_engine.base_id}+lora-{adapter_hash(made)}"
    builds = []
    tiny_engine.defer_adapter(model_id, lambda: builds.append(1) or made)
    try:
        assert tiny_engine.is_deferred(model_id) and builds == []  # deferring builds nothing
        answers = {tiny_lm.copy(model=model_id, temperature=0.0)("hi")[0] for _ in range(2)}
        assert builds == [1] and not tiny_engine.is_deferred(model_id)  # built once, on first use
        assert tiny_engine.adapter_path(model_id) == made.resolve() and len(answers) == 1
        # A build that saves other weights than the id names is refused, naming both.
        other = save_random_adapter(tiny_model_dir, tmp_path / "other", seed=4)
        wanted = f"{tiny_engine.base_id}+lora-{hashlib.sha256(b'x').hexdigest()[:12]}"
        tiny_engine.defer_adapter(wanted, lambda: other)
        with pytest.raises(Exception, match=f"made again for {re.escape(wanted)}.*other weights"):
            tiny_engine.adapter_path(wanted)
    finally:
        tiny_engine.unload_adapter(model_id)


def test_an_adapter_id_depends_on_its_content_not_on_where_the_base_model_lay(tiny_model_dir, tmp_path):
    import shutil

    from restpg_dspy.serving import adapter_hash

    here = save_random_adapter(tiny_model_dir, tmp_path / "here", seed=5)
    elsewhere = Path(shutil.copytree(here, tmp_path / "elsewhere"))
    config = json.loads((elsewhere / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/another/home/models/the-same-base"
    (elsewhere / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_hash(here) == adapter_hash(elsewhere)
    assert adapter_hash(here, with_base_path=True) != adapter_hash(elsewhere, with_base_path=True)
    other = save_random_adapter(tiny_model_dir, tmp_path / "other", seed=6)
    assert adapter_hash(other) != adapter_hash(here)  # the weights still count


def test_a_run_recorded_under_the_earlier_adapter_hash_still_makes_its_deferred_adapter(
    tiny_engine, tiny_lm, tiny_model_dir, tmp_path
):
    from restpg_dspy.serving import adapter_hash

    made = save_random_adapter(tiny_model_dir, tmp_path / "made", seed=7)
    recorded = f"{tiny_engine.base_id}+lora-{adapter_hash(made, with_base_path=True)}"
    tiny_engine.defer_adapter(recorded, lambda: made)
    try:
        assert tiny_lm.copy(model=recorded, temperature=0.0)("hi")[0] is not None
        assert tiny_engine.adapter_path(recorded) == made.resolve() and not tiny_engine.is_deferred(recorded)
    finally:
        tiny_engine.unload_adapter(recorded)
        tiny_engine.unload_adapter(f"{tiny_engine.base_id}+lora-{adapter_hash(made)}")


def test_serve_on_moves_a_program_with_its_adapter_to_another_engine_on_the_same_weights(
    tiny_engine, tiny_lm, tiny_model_dir, tmp_path
):
    from restpg_dspy.errors import UsageError

    adapter = save_random_adapter(tiny_model_dir, tmp_path / "a", seed=8)
    program = dspy.Predict("question -> answer")
    program.lm = tiny_lm.copy(model=tiny_engine.register_adapter(adapter), temperature=0.0)
    server = restpg_dspy.lm(f"local:{tiny_model_dir}", batch_window_ms=5.0, default_max_tokens=16, max_tokens=16)
    assert server.engine is not tiny_engine
    served = restpg_dspy.serve_on(program, server.copy(temperature=0.0))
    assert served.lm.engine is server.engine and served.lm.model == program.lm.model  # same weights, same id
    assert server.engine.adapter_path(served.lm.model) == adapter.resolve() and program.lm.engine is tiny_engine
    assert served.lm("hi") == program.lm("hi") != tiny_lm.copy(temperature=0.0)("hi")
    with pytest.raises(UsageError, match="cannot serve the adapters restpg-dspy trains"):
        restpg_dspy.serve_on(program, dspy.LM("openai/gpt-4o-mini"))
    with pytest.raises(UsageError, match="must share the same base weights"):
        restpg_dspy.serve_on(program, restpg_dspy.lm("local"))


def test_api_backends_pass_through_to_dspy():
    lm = restpg_dspy.lm("openai/gpt-4o-mini", temperature=0.3)
    assert isinstance(lm, dspy.LM) and lm.model == "openai/gpt-4o-mini" and lm.kwargs["temperature"] == 0.3
    with pytest.raises(ValueError, match="adapter= needs a backend that serves adapters"):
        restpg_dspy.lm("openai/gpt-4o-mini", adapter="/tmp/x")


def test_a_failing_batch_fails_its_callers_and_the_worker_serves_on(tiny_engine, tiny_model_dir, monkeypatch):
    lm = restpg_dspy.lm(f"local:{tiny_model_dir}", batch_window_ms=50.0, default_max_tokens=16, cache=False)
    run = tiny_engine._run

    def generation_crash(model_id, jobs):
        if any(job.params.max_tokens == 3 for job in jobs):  # the poisoned request's mark
            raise RuntimeError("generation crashed")
        return run(model_id, jobs)

    monkeypatch.setattr(tiny_engine, "_run", generation_crash)
    outcome = {}

    def call():
        try:
            outcome["result"] = lm("A poison prompt.", max_tokens=3)
        except Exception as err:
            outcome["error"] = err

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the caller of a failed batch was left waiting"
    assert "generation crashed" in str(outcome["error"])
    assert isinstance(lm("A later, healthy prompt.", max_tokens=4)[0], str)


def test_the_local_engine_is_an_adapter_serving_engine(tiny_lm, tiny_engine):
    from restpg_dspy.serving import AdapterServing, serving_engine

    assert isinstance(tiny_engine, AdapterServing) and serving_engine(tiny_lm) is tiny_engine
    assert tiny_engine.context_length == tiny_engine.loaded.context_length
    assert tiny_engine.tokenizer is tiny_engine.loaded.tokenizer
    assert tiny_engine.adapter_path(tiny_engine.base_id) is None


def test_weights_computing_in_another_dtype_get_their_own_model_ids(tiny_engine, tiny_model_dir, tmp_path):
    lower = LocalEngine(str(tiny_model_dir), dtype="bfloat16")
    assert lower.base_id == f"{tiny_engine.base_id}@bfloat16" and "@" not in tiny_engine.base_id
    adapter = save_random_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    assert lower.register_adapter(adapter) == tiny_engine.register_adapter(adapter).replace("+", "@bfloat16+", 1)
    assert lower.adapter_path(tiny_engine.base_id + "@bfloat16") is None
    with pytest.raises(Exception, match="not served by this engine"):
        lower.adapter_path(tiny_engine.base_id)  # float32 outputs are never served for bfloat16 ones, or back


# --- repetition controls ----------------------------------------------------------------------------------------


def test_repetition_controls_travel_in_the_model_id_and_change_what_is_generated(tiny_model_dir):
    from restpg_dspy.serving import split_decoding

    settings = {"batch_window_ms": 50.0, "default_max_tokens": 16, "max_tokens": 120, "cache": False}
    plain = restpg_dspy.lm(f"local:{tiny_model_dir}", **settings)
    controlled = restpg_dspy.lm(f"local:{tiny_model_dir}", no_repeat_ngram_size=1, **settings)
    assert controlled.model == plain.model + "?no_repeat_ngram_size=1"
    assert split_decoding(controlled.model) == (plain.model, {"no_repeat_ngram_size": 1})
    prompt = "the the the the the the the the"
    assert controlled(prompt)[0] != plain(prompt)[0]
    # Each setting is part of the id, so DSPy's cache never answers one setting with another's output.
    stronger = restpg_dspy.with_repetition_controls(controlled, repetition_penalty=1.5)
    assert split_decoding(stronger.model)[1] == {"no_repeat_ngram_size": 1, "repetition_penalty": 1.5}
    assert restpg_dspy.with_repetition_controls(stronger, no_repeat_ngram_size=0).model == (
        plain.model + "?repetition_penalty=1.5"
    )
    # frequency_penalty and presence_penalty are DSPy's own settings: honoured per call, not ignored.
    assert plain(prompt, frequency_penalty=2.0)[0] != plain(prompt)[0]
    assert plain(prompt, presence_penalty=2.0)[0] != plain(prompt)[0]


def test_bad_repetition_controls_are_refused_by_name(tiny_lm):
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be >= 0"):
        restpg_dspy.with_repetition_controls(tiny_lm, no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        restpg_dspy.with_repetition_controls(tiny_lm, repetition_penalty=0)
    with pytest.raises(Exception, match="unknown decoding setting 'typo'"):
        tiny_lm.copy(model=tiny_lm.model + "?typo=1")("hi")
    with pytest.raises(ValueError, match="not served by this package's engines"):
        restpg_dspy.with_repetition_controls(dspy.LM("openai/gpt-4o-mini"), repetition_penalty=1.2)


def test_a_model_trained_with_repetition_controls_keeps_them(tiny_model_dir, tmp_path):
    from restpg_dspy.serving import split_decoding

    lm = restpg_dspy.lm(f"local:{tiny_model_dir}", repetition_penalty=1.3, max_tokens=8, cache=False)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 2
    job = lm.finetune(
        train_data=rows, train_data_format="chat", train_kwargs={"max_steps": 1, "output_dir": str(tmp_path)}
    )
    tuned = job.result()
    weights, controls = split_decoding(tuned.model)
    assert "+lora-" in weights and controls == {"repetition_penalty": 1.3}
    assert isinstance(tuned("hi")[0], str)


def test_a_merged_copy_of_an_adapter_writes_what_the_unmerged_adapter_writes(tiny_model_dir, tmp_path):
    unmerged = restpg_dspy.lm(f"local:{tiny_model_dir}", max_tokens=12, cache=False)
    merged = restpg_dspy.lm(f"local:{tiny_model_dir}", max_tokens=12, cache=False, merged_adapters=1)
    engine = merged.engine
    assert engine is not unmerged.engine and engine.loaded is unmerged.engine.loaded  # one base model in memory
    first, second = (save_random_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed) for seed in (7, 8))
    prompts = [f"Prompt {i}: tell me about birds." for i in range(3)]
    for adapter in (first, second):
        a, b = (
            unmerged.copy(model=unmerged.engine.register_adapter(adapter)),
            merged.copy(model=engine.register_adapter(adapter)),
        )
        assert a.model == b.model  # the same weights, so the same id: caches are shared
        for prompt in prompts:
            assert a(prompt) == b(prompt)  # greedy
            assert a(prompt, temperature=0.9, seed=11) == b(prompt, temperature=0.9, seed=11)
    assert list(engine._merged) == [second.resolve()]  # one copy kept: the least recently used one was dropped
    assert all("lora" not in name for name, _ in engine._merged[second.resolve()].named_modules())
    assert unmerged(prompts[0]) != a(prompts[0])  # the adapter matters, so the comparison above could fail
    with pytest.raises(UsageError, match="merged_adapters must be >= 0"):
        LocalEngine(str(tiny_model_dir), merged_adapters=-1)


def test_adapters_beyond_the_loaded_cap_are_dropped_and_loaded_again_on_demand(tiny_model_dir, tmp_path):
    capped = restpg_dspy.lm(f"local:{tiny_model_dir}", max_tokens=12, cache=False, max_loaded_adapters=1)
    engine = capped.engine
    adapters = [save_random_adapter(tiny_model_dir, tmp_path / f"c{seed}", seed=seed) for seed in (21, 22, 23)]
    lms = [capped.copy(model=engine.register_adapter(adapter)) for adapter in adapters]
    prompt = "Tell me about rivers."
    first = [lm(prompt) for lm in lms]
    assert len(set(map(tuple, first))) == 3  # three different adapters, three different answers
    assert len(engine._host._peft.peft_config) == 1  # the others were deleted as the next came in
    assert [lm(prompt) for lm in reversed(lms)] == list(reversed(first))  # reloaded, they answer as before
    with pytest.raises(UsageError, match="max_loaded_adapters must be at least 1"):
        LocalEngine(str(tiny_model_dir), max_loaded_adapters=0)
    with pytest.raises(UsageError, match="kv_cache must be one of"):
        LocalEngine(str(tiny_model_dir), kv_cache="static")


def test_a_mixed_batch_writes_for_each_request_what_its_own_adapter_writes(tiny_model_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    grouped = restpg_dspy.lm(f"local:{tiny_model_dir}", max_tokens=12, cache=False, batch_window_ms=200.0)
    mixed = restpg_dspy.lm(
        f"local:{tiny_model_dir}",
        max_tokens=12,
        cache=False,
        batch_window_ms=200.0,
        mixed_adapter_batches=True,
        max_loaded_adapters=2,
    )
    adapters = [save_random_adapter(tiny_model_dir, tmp_path / f"m{seed}", seed=seed) for seed in (31, 32, 33)]
    calls = [(adapter, f"Prompt {i}: tell me about trees.") for i in range(2) for adapter in [None, *adapters]]

    def answer(lm, adapter, prompt):
        on = lm if adapter is None else lm.copy(model=lm.engine.register_adapter(adapter))
        return on(prompt)[0], on(prompt, temperature=0.9, seed=5)[0]

    expected = [answer(grouped, *call) for call in calls]
    batches = mixed.engine.stats["batches"]
    with ThreadPoolExecutor(len(calls)) as pool:  # all eight requests reach the engine in one window
        got = list(pool.map(lambda call: answer(mixed, *call), calls))
    assert got == expected
    assert len({e[0] for e in expected}) > 4  # the adapters change the answers, so the comparison could fail
    # Four weights (the base and three adapters), at most two adapters a generation: fewer generations than
    # one per adapter per step would need.
    assert mixed.engine.stats["batches"] - batches < 2 * 4
