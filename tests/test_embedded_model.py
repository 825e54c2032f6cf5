"""The real embedded SmolLM2-135M-Instruct: answers, samples, and learns a made-up fact through lm.finetune."""

import json
import subprocess
import sys

import dspy
import pytest

import restpg_dspy
from tests.password import PASSWORD, PROBE, password_rows

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer with one word."


@pytest.fixture(scope="module")
def smol():
    return restpg_dspy.lm("local")


def test_answers_paris_at_temperature_zero(smol):
    assert "Paris" in smol(QUESTION)[0]


def test_samples_differ_at_temperature_one(smol):
    answers = smol.copy(temperature=1.0, cache=False)(QUESTION, n=4)
    assert len(answers) == 4
    # Four unseeded draws of a likely answer are sometimes all the same: six seeded ones are not.
    seeded = {smol.copy(temperature=1.0, seed=s, rollout_id=s)(QUESTION)[0] for s in range(6)}
    assert len(seeded) >= 2


def test_same_rollout_id_gives_the_same_answer(smol):
    hot = smol.copy(temperature=1.0)
    assert hot(QUESTION, rollout_id=1234) == hot(QUESTION, rollout_id=1234)


def test_learns_a_made_up_password_and_reloads_it_in_a_new_process(smol, tmp_path):
    rows = password_rows()
    settings = {"num_train_epochs": 10, "learning_rate": 1e-3, "r": 8, "output_dir": str(tmp_path)}
    job = smol.finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    tuned = job.result()
    probe = PROBE  # not one of the training questions
    assert PASSWORD not in smol(probe)[0]
    assert PASSWORD in tuned(probe)[0]

    state = json.dumps(tuned.dump_state())
    script = f"""
import json, dspy, restpg_dspy
fresh = restpg_dspy.lm("local", adapter={job.log["adapter"]!r}, cache=False)
loaded = dspy.LM.load_state(json.loads({state!r}), allow_custom_lm_class=True).copy(cache=False)
print(json.dumps([fresh.model, fresh({probe!r})[0], loaded.model, loaded({probe!r})[0]]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    fresh_id, fresh_answer, loaded_id, loaded_answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh_id == loaded_id == tuned.model
    assert PASSWORD in fresh_answer and PASSWORD in loaded_answer


def run_writer(smol, examples):
    from restpg_dspy.programs import PersonalizedWriter
    from restpg_dspy.retrieval import BM25

    writer = PersonalizedWriter(retriever=BM25(k=2))
    lm = smol.copy(max_tokens=64, cache=False)
    with dspy.context(lm=lm):
        predictions = writer.batch(examples, num_threads=len(examples), disable_progress_bar=True)
    prompts = [call["messages"][-1]["content"] for call in lm.history]
    completions = [call["outputs"][0] for call in lm.history]
    assert len(lm.history) == 2 * len(examples)  # a reasoning call and a writing call per example
    for example, prediction in zip(examples, predictions, strict=True):
        assert prediction.retrieved == BM25(k=2)(example.request, example.profile)
        notes, response = prediction.reasoning.strip(), prediction.response.strip()
        assert notes and response
        # The writing step saw this example's request and its own notes, and its completion is the response.
        written = [i for i, p in enumerate(prompts) if notes in p and example.request in p]
        assert len(written) == 1 and completions[written[0]].strip() == response
    assert writer.formatter.stats["items_shown"] == 2 * len(examples)  # k items per example, shared by both steps


def test_personalized_writer_on_synthetic_users(smol):
    from restpg_dspy.data import synthetic

    run_writer(smol, synthetic("test", seed=0)[:3])


def test_personalized_writer_on_the_longlamp_sample(smol, shared_sample):
    from restpg_dspy.data import load_longlamp

    run_writer(smol, load_longlamp("abstract_generation", "val", path=shared_sample, limit=2))
