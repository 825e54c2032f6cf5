import json

import pytest

from restpg_dspy.data import load_longlamp, synthetic
from restpg_dspy.data.life_facts import FACTS
from restpg_dspy.retrieval import BM25


def test_life_facts_same_seed_gives_identical_data_and_other_seeds_differ():
    first = [e.toDict() for e in synthetic("train", seed=3, task="life_facts")]
    assert first == [e.toDict() for e in synthetic("train", seed=3, task="life_facts")]
    assert first != [e.toDict() for e in synthetic("train", seed=4, task="life_facts")]


def test_life_facts_users_never_appear_in_two_splits():
    splits = {
        name: synthetic(name, seed=0, users=40 if name == "train" else None, task="life_facts")
        for name in ("train", "val", "test")
    }
    ids = {name: {e.user_id for e in examples} for name, examples in splits.items()}
    names = {name: {e.traits["name"] for e in examples} for name, examples in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b] and not names[a] & names[b]


def test_examples_have_inputs_and_fields():
    example = synthetic("val", seed=0, task="life_facts")[0]
    assert set(example.inputs().keys()) == {"request", "profile"}
    assert example.output and example.user_id and example.id and example.family in ("review", "dish", "trip")


def test_life_facts_outputs_carry_the_users_style_and_every_fact_their_profile_implies():
    from restpg_dspy.data.life_facts import DISHES

    for example in synthetic("test", seed=0, task="life_facts"):
        traits, output = example.traits, example.output
        assert output.startswith(traits["greeting"] + " ") and output.endswith(" " + traits["sign_off"])
        assert traits["phrase"].capitalize() in output
        for fact in traits["facts"]:
            # the fact's sentence for this request kind, and one of the fact's evidence sentences in the profile
            assert FACTS[fact][example.family] in output
            assert sum(e in item["text"] for e in FACTS[fact]["evidence"] for item in example.profile) == 1
        if example.family == "dish":
            kind = "vegetarian" if "vegetarian" in traits["facts"] else "meat"
            assert any(f"I recommend {dish}." in output for dish in DISHES[kind])


def test_similarity_retrieval_misses_some_life_fact_posts():
    examples = synthetic("train", seed=0, task="life_facts")
    retriever = BM25(k=2)
    missed = 0
    for example in examples:
        evidence = {text for fact in example.traits["facts"] for text in FACTS[fact]["evidence"]}
        found = any(
            any(text in item["text"] for text in evidence) for item in retriever(example.request, example.profile)
        )
        missed += not found
    assert missed / len(examples) > 0.3


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records))
    return path


RECORD = {
    "id": "r1",
    "input": 'Generate an abstract for the title "T"',
    "output": "An abstract.",
    "profile": [{"title": "A", "abstract": "B"}],
    "extra": 7,
}


def test_local_jsonl_in_hub_schema_loads(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [RECORD, {**RECORD, "id": "r2", "user_id": "alice"}])
    first, second = load_longlamp("abstract_generation", "val", path=path)
    assert first.request == RECORD["input"] and first.output == "An abstract." and first.extra == 7
    assert first.user_id == "r1" and second.user_id == "alice"  # no author key: the record id stands in
    assert set(first.inputs().keys()) == {"request", "profile"}


def test_json_list_and_limit_with_seed(tmp_path):
    records = [{**RECORD, "id": f"r{i}"} for i in range(20)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    assert [e.id for e in load_longlamp("abstract_generation", "val", path=path, limit=3)] == ["r0", "r1", "r2"]
    sample = [e.id for e in load_longlamp("abstract_generation", "val", path=path, limit=5, seed=1)]
    assert sample == [e.id for e in load_longlamp("abstract_generation", "val", path=path, limit=5, seed=1)]
    assert sample != ["r0", "r1", "r2", "r3", "r4"]


def test_email_outputs_join_by_id(tmp_path):
    questions = write_jsonl(
        tmp_path / "q.jsonl", [{"id": "e1", "input": "Complete the email.", "profile": [{"title": "t", "text": "x"}]}]
    )
    outputs = tmp_path / "o.json"
    outputs.write_text(json.dumps({"task": "email", "golds": [{"id": "e1", "output": "Hi Bob"}]}))
    (example,) = load_longlamp("email", "test", path=questions, outputs_path=outputs)
    assert example.output == "Hi Bob"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**RECORD, "input": ""}, "record 'r1': field 'input'"),
        ({k: v for k, v in RECORD.items() if k != "output"}, "record 'r1': field 'output'"),
        ({**RECORD, "profile": "oops"}, "record 'r1': field 'profile' must be a list"),
        ({**RECORD, "profile": [{"title": "a"}, "text"]}, "record 'r1': profile item 1 must be an object"),
        ({k: v for k, v in RECORD.items() if k != "id"} | {"profile": None}, "record 1: field 'profile'"),
    ],
)
def test_bad_records_are_named(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORD, record])
    with pytest.raises(ValueError, match=message):
        load_longlamp("abstract_generation", "val", path=path)


def test_broken_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(RECORD) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2"):
        load_longlamp("abstract_generation", "val", path=path)


def test_unknown_task_and_offline_hub_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="unknown LongLaMP task 'poetry'"):
        load_longlamp("poetry")
    with pytest.raises(ValueError, match=r"email task .* is not on the hub"):
        load_longlamp("email")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="pass path= to local files"):
        load_longlamp("product_review", "val")


def test_shared_longlamp_sample_loads(shared_sample):
    examples = load_longlamp("abstract_generation", "val", path=shared_sample)
    assert len(examples) == 41
    first = examples[0]
    assert first.user_id == first.id == "dev-0"
    assert first.reference_prediction and len(first.profile) == 4
    assert first.request.startswith("Generate an abstract for the title")


def test_one_file_is_split_by_the_hash_of_record_ids_whatever_its_order(tmp_path):
    from restpg_dspy.experiments.registry import load_split

    records = [{"id": f"r{i}", "input": f"Title {i}", "output": f"abstract {i}", "profile": []} for i in range(9)]
    forward, backward = tmp_path / "forward.jsonl", tmp_path / "backward.jsonl"
    forward.write_text("".join(json.dumps(r) + "\n" for r in records))
    backward.write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    parts = {}
    for path in (forward, backward):
        for split in ("train", "test"):
            examples = load_split(
                f"longlamp:abstract_generation:{path}", split, seed=0, synthetic_task="", users=None, limit=None
            )
            parts.setdefault(split, set()).add(tuple(sorted(e.id for e in examples)))
    assert len(parts["train"]) == len(parts["test"]) == 1  # the file's order does not matter
    (train,), (test,) = parts["train"], parts["test"]
    assert len(train) == 4 and len(test) == 5 and not set(train) & set(test)
    with pytest.raises(ValueError, match="no 'val' part"):
        load_longlamp("abstract_generation", "val", path=forward, split_by_hash=True)
    forward.write_text(forward.read_text() + json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match="unique 'id'"):
        load_longlamp("abstract_generation", "train", path=forward, split_by_hash=True)
