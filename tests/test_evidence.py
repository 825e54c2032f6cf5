"""The evidence teacher: deterministic notes that cite only profile items that exist and never copy the output."""

import json
import re

import dspy
import pytest

import restpg_dspy
from restpg_dspy.data import EvidenceTeacherError, evidence_teacher, load_longlamp, synthetic
from restpg_dspy.data.evidence import copied_runs, parse_fields, within_copy_limit, words
from restpg_dspy.optimizers import RESTPG
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.programs.signatures import HindsightReasoning
from restpg_dspy.retrieval import BM25

ABSTRACTS = [  # our own long-form fixture: one user's earlier abstracts and the abstract they wrote next
    {
        "title": "Sparse codes for speech",
        "abstract": "We learn sparse codes of speech frames. The codes improve "
        "speech recognition in noise by a wide margin on two benchmarks.",
    },
    {
        "title": "Graph search at scale",
        "abstract": "We study breadth first search on graphs with billions of edges "
        "and show a partitioning that halves the running time.",
    },
    {
        "title": "Dictionary learning for audio",
        "abstract": "Dictionary learning finds sparse codes of audio; we "
        "apply it to music and speech recognition and report 12% fewer errors.",
    },
]
OUTPUT = (
    "We propose robust sparse codes for noisy speech recognition. Our dictionary learning method adapts the "
    "codes to each speaker and cuts word errors by 9% on three benchmarks."
)


def rendered(writer, request, profile):
    items, task = writer.retrieve(request, profile)
    return writer.render_profile(items, task), len(items)


def notes_for(teacher, request, profile, output, writer=None):
    writer = writer or PersonalizedWriter(retriever=BM25(k=4))
    shown, count = rendered(writer, request, profile)
    predictor = dspy.Predict(HindsightReasoning)
    predictor.lm = teacher
    with dspy.context(adapter=writer.adapter):
        notes = predictor(request=request, profile=shown, expected_output=output).reasoning
    return notes, shown, count


def cited(notes):
    return {int(n) for n in re.findall(r"\[(\d+)\]", notes)}


def test_notes_cite_the_items_the_output_draws_on_and_describe_it():
    notes, shown, count = notes_for(evidence_teacher(), "Robust speech codes", ABSTRACTS, OUTPUT)
    graph = next(int(n) for n, title in re.findall(r"\[(\d+)\] Title: (.*)", shown) if title.startswith("Graph"))
    assert count == 3 and cited(notes) == {1, 2, 3} - {graph}  # the graph paper shares nothing with it
    assert "first person plural" in notes and 'starts with "We propose"' in notes and "reports numbers" in notes


def test_notes_are_deterministic_and_the_teacher_is_labelled_a_stand_in():
    teacher = restpg_dspy.lm("evidence")
    assert teacher.model == evidence_teacher().model == "evidence-teacher/notes1"
    assert (
        notes_for(teacher, "Robust speech codes", ABSTRACTS, OUTPUT)[0]
        == notes_for(evidence_teacher(), "Robust speech codes", ABSTRACTS, OUTPUT)[0]
    )
    assert "stands in" in restpg_dspy.data.evidence.__doc__ and "large teacher LM" in evidence_teacher.__doc__


@pytest.mark.parametrize("task", ["life_facts", "implicit_choice_v2"])
def test_on_our_synthetic_tasks_notes_cite_existing_items_within_the_copy_limit(task):
    for example in synthetic("train", seed=0, users=4, task=task):
        notes, shown, count = notes_for(evidence_teacher(), example.request, example.profile, example.output)
        assert cited(notes) <= set(range(1, count + 1)), notes
        assert within_copy_limit(notes, example.output, shown), notes


def test_an_output_copied_from_the_profile_is_still_not_copied_into_the_notes():
    copied = ABSTRACTS[0]["abstract"] + " " + ABSTRACTS[2]["abstract"]
    notes = notes_for(evidence_teacher(), "Speech codes again", ABSTRACTS, copied)[0]
    out = words(copied)
    long_runs = sum(length for _, length in copied_runs(notes, copied) if length > 3)
    assert long_runs <= 0.25 * len(out) and max(length for _, length in copied_runs(notes, copied)) <= 8


def test_the_copy_limit_follows_its_definition():
    output = "one two three four five six seven eight nine ten eleven twelve"
    profile = "nothing in common here"
    assert copied_runs("two three x nine", output) == [(1, 2), (8, 1)]
    assert within_copy_limit("one two three", output, profile)  # 3 words in a row: allowed
    assert not within_copy_limit("one two three four", output, profile)  # 4 of 12 words in a long run: over 25%
    nine = "one two three four five six seven eight nine"
    long_output = " ".join([nine, *[f"w{i}" for i in range(40)]])
    assert not within_copy_limit(nine, long_output, profile)  # 9 in a row the profile does not hold
    assert within_copy_limit(nine, long_output, f"earlier: {nine} too")  # ... unless the profile holds them


def test_prompts_it_cannot_read_are_refused_by_name():
    engine = evidence_teacher().engine
    with pytest.raises(EvidenceTeacherError, match="no numbered items"):
        engine.notes("just some text", "a request", "an output")
    with pytest.raises(EvidenceTeacherError, match="output is empty"):
        engine.notes("[1] Title: x\nAbstract: y", "a request", "  ")
    with pytest.raises(Exception, match=r"no \['profile'\] section"):
        evidence_teacher()("Request:\nhi\n\nExpected output:\nthere\n\nWrite the reasoning.")
    fields = parse_fields("Profile:\n[1] Title: a\nAbstract: b\n\nRequest:\nq\n\nExpected output:\nc d\n\nWrite the x.")
    assert fields == {"profile": "[1] Title: a\nAbstract: b", "request": "q", "expected_output": "c d"}


def test_real_abstracts_get_notes_within_the_copy_limit(shared_sample):
    examples = load_longlamp("abstract_generation", path=str(shared_sample))
    for example in examples:
        notes, shown, count = notes_for(evidence_teacher(), example.request, example.profile, example.output)
        assert cited(notes) <= set(range(1, count + 1)) and within_copy_limit(notes, example.output, shown)
    assert len(examples) == len(shared_sample.read_text().splitlines())


def test_restpg_trains_on_the_evidence_teachers_notes(tiny_lm, tmp_path):
    trainset = synthetic("train", seed=0, users=2, requests_per_user=1, task="life_facts")
    writer = PersonalizedWriter(retriever=BM25(k=2))
    writer.set_lm(tiny_lm.copy(max_tokens=8))
    optimizer = RESTPG(run_dir=str(tmp_path), rounds=0, train_kwargs={"max_steps": 1}, num_threads=2, verbose=False)
    optimizer.compile(writer, trainset=trainset, teacher=evidence_teacher())
    rows = [json.loads(line) for line in (tmp_path / "teacher_reasoning.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["reasoning"].startswith("- Item") for row in rows)
    for row, example in zip(sorted(rows, key=lambda r: r["id"]), sorted(trainset, key=lambda e: e.id), strict=True):
        count = rendered(writer, example.request, example.profile)[1]
        assert cited(row["reasoning"]) <= set(range(1, count + 1))
