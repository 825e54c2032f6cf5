"""The oracle teacher of the implicit_choice task: notes from the generator's traits, never invented."""

import json
from collections import Counter

import dspy
import pytest

import restpg_dspy
from restpg_dspy.data import OracleError, oracle_teacher, synthetic
from restpg_dspy.data.oracle import IMPLICATIONS, OracleEngine
from restpg_dspy.evals import notes_choice
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.programs.adapter import CompletionAdapter
from restpg_dspy.programs.signatures import HindsightReasoning
from restpg_dspy.retrieval import BM25
from restpg_dspy.tasks import TASKS


def shown_profile(example):
    return PersonalizedWriter(retriever=BM25(k=4)).formatter.render(example.profile, TASKS["synthetic"])


def hindsight(teacher, example, profile=None):
    predictor = dspy.Predict(HindsightReasoning)
    predictor.lm = teacher
    with dspy.context(adapter=CompletionAdapter()):
        return predictor(
            request=example.request, profile=profile or shown_profile(example), expected_output=example.output
        ).reasoning


def evidence_post(example):
    from restpg_dspy.data.oracle import EVIDENCE

    text = next(sentence for sentence in EVIDENCE if any(sentence in item["text"] for item in example.profile))
    return next(n for n, item in enumerate(example.profile, start=1) if text in item["text"])


@pytest.mark.parametrize("task", ["implicit_choice", "implicit_choice_v2"])
def test_notes_cite_the_evidence_post_its_implication_and_the_right_option(task):
    for example in synthetic("test", seed=0, users=6, requests_per_user=3, task=task):
        notes = hindsight(oracle_teacher(), example)
        assert notes.splitlines() == [
            f"- Post [{evidence_post(example)}] shows that {IMPLICATIONS[example.fact]}.",
            f"- So what matters most to them: {example.aspect}.",
            f"- The option that fits: {example.answer}.",
        ]
        assert example.output not in notes
        assert notes_choice(example, notes) == {
            "names_answer_only": True,
            "names_wrong_option": False,
            "names_no_option": False,
            "cites_post": True,
        }


def test_noisy_oracle_names_a_wrong_offered_option_for_about_its_fraction():
    examples = synthetic("train", seed=0)
    engine = OracleEngine(noise=0.3, seed=1)
    wrong = []
    for example in examples:
        notes = engine.notes(f"Profile:\n{shown_profile(example)}\n\nRequest:\n{example.request}")
        chosen = notes.splitlines()[-1].removeprefix("- The option that fits: ").rstrip(".")
        assert chosen in example.options
        wrong.append(chosen != example.answer)
    assert 0.2 < sum(wrong) / len(wrong) < 0.4
    assert OracleEngine(noise=0.3, seed=1).notes(example.request + shown_profile(example)) == engine.notes(
        example.request + shown_profile(example)
    )


def test_a_noisy_note_cites_a_distractor_post_drawn_with_its_wrong_fact():
    cited = Counter()
    for example in synthetic("train", seed=0, task="implicit_choice_v2"):
        notes = OracleEngine(noise=0.3, seed=2).notes(f"Profile:\n{shown_profile(example)}\n\n{example.request}")
        post = int(notes.split("[", 1)[1].split("]", 1)[0])
        if notes.splitlines()[-1] != f"- The option that fits: {example.answer}.":
            assert post != evidence_post(example)
            distractors = [n for n in range(1, 5) if n != evidence_post(example)]
            cited[distractors.index(post)] += 1
        else:
            assert post == evidence_post(example)
    # The cited distractor is not a fixed pattern (v1 always cited the lowest-numbered one): each rank is cited.
    assert sorted(cited) == [0, 1, 2] and min(cited.values()) >= 0.15 * sum(cited.values())


def test_oracle_refuses_what_it_did_not_generate():
    life_facts = synthetic("train", seed=0, users=1, requests_per_user=1, task="life_facts")[0]
    with pytest.raises(OracleError, match="no evidence post of the implicit_choice task"):
        OracleEngine().notes(f"{life_facts.request}\n{life_facts.profile}")
    example = synthetic("train", seed=0, users=1, requests_per_user=1)[0]
    with pytest.raises(OracleError, match="none of the options that serve it"):
        OracleEngine().notes(shown_profile(example) + "\nWhich cake should I bake?")
    with pytest.raises(ValueError, match="noise must be a fraction"):
        oracle_teacher(noise=1.5)
    with pytest.raises(ValueError, match="'oracle:<noise>' takes a fraction"):
        restpg_dspy.lm("oracle:lots")


def test_backend_string_and_saved_program_keep_the_oracle():
    assert restpg_dspy.lm("oracle").model == "oracle/implicit_choice-notes2-noise0-seed0"
    teacher = restpg_dspy.lm("oracle:0.25")
    state = teacher.dump_state()
    assert dspy.LM.load_state(state, allow_custom_lm_class=True).engine.noise == 0.25


@pytest.mark.slow
def test_restpg_with_the_oracle_teacher_trains_the_embedded_model_on_notes_citing_the_posts_it_was_shown(tmp_path):
    import re

    from restpg_dspy.optimizers import RESTPG

    trainset = synthetic("train", seed=0, users=2, requests_per_user=2, task="implicit_choice_v2")
    program = PersonalizedWriter(retriever=BM25(k=4), reasoning_max_tokens=48, response_max_tokens=48)
    program.set_lm(restpg_dspy.lm("local"))
    optimizer = RESTPG(
        rounds=1,
        samples_per_input=1,
        run_dir=str(tmp_path / "run"),
        train_kwargs={"max_steps": 1, "output_dir": str(tmp_path / "adapters")},
        verbose=False,
    )
    compiled = optimizer.compile(program, trainset=trainset, teacher=oracle_teacher())
    assert [entry["stage"] for entry in compiled.restpg_history] == ["sft", "round_1"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "sft" / "rows.jsonl").read_text().splitlines()]
    reasoning_rows = [row for row in rows if "Write the reasoning" in row["messages"][-2]["content"]]
    assert len(reasoning_rows) == len(trainset)
    for example, row in zip(trainset, reasoning_rows, strict=True):
        shown, notes = row["messages"][-2]["content"], row["messages"][-1]["content"]
        cited = int(re.match(r"- Post \[(\d)\] shows that", notes).group(1))
        # The cited number is the number of the evidence post in the prompt the student was trained on.
        post = re.search(rf"\[{cited}\] Post: (.*)", shown).group(1)
        assert example.evidence in post and notes.endswith(f"The option that fits: {example.answer}.")
