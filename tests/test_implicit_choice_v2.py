"""Properties of the implicit_choice_v2 task, checked without any LM; version 1 stays byte for byte as it was."""

import functools
import hashlib
import json
from collections import Counter

import dspy
import pytest

from restpg_dspy.data import synthetic
from restpg_dspy.data.implicit_choice import DISTRACTORS, FAMILIES, OPTIONS_PER_REQUEST, POLICIES, policy_response
from restpg_dspy.data.implicit_choice_v2 import FACTS, HELD_OUT_EVIDENCE, SEEN_WORDINGS
from restpg_dspy.evals import option_accuracy, rouge_l
from restpg_dspy.evals.choice import content_words

SPLITS = ("train", "val", "test")
CHANCE = 1 / OPTIONS_PER_REQUEST


@pytest.fixture(scope="module")
def splits():
    return {split: synthetic(split, seed=0, task="implicit_choice_v2") for split in SPLITS}


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def sentence(example):
    return (example.fact, example.traits["wording"])


def test_version_1_data_is_unchanged():
    data = [[e.toDict() for e in synthetic(split, seed=0, task="implicit_choice")] for split in SPLITS]
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert digest == "1adb8e5aa82c7e0095ccd996a0e5d1762536e48a4acd66628a044da1d986706a"


def test_version_2_data_is_fixed():
    data = [[e.toDict() for e in synthetic(split, seed=0, task="implicit_choice_v2")] for split in SPLITS]
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert digest == "1f39cf8b975050e00fa08897e61fe340e29ae543c4662ab5264fdc76cfe545d2"


def test_same_seed_gives_identical_data_and_other_seeds_differ():
    first = [e.toDict() for e in synthetic("test", seed=5, task="implicit_choice_v2")]
    assert first == [e.toDict() for e in synthetic("test", seed=5, task="implicit_choice_v2")]
    assert first != [e.toDict() for e in synthetic("test", seed=6, task="implicit_choice_v2")]


def test_users_are_disjoint_across_splits(splits):
    ids = {split: {e.user_id for e in examples} for split, examples in splits.items()}
    names = {split: {e.traits["name"] for e in examples} for split, examples in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b] and not names[a] & names[b]


def test_each_fact_has_four_seen_and_eight_held_out_sentences():
    for fact, spec in FACTS.items():
        assert len(spec["evidence"]) == len(set(spec["evidence"])) == 12
        assert spec["evidence"][SEEN_WORDINGS:] == HELD_OUT_EVIDENCE[fact]
    assert sum(map(len, HELD_OUT_EVIDENCE.values())) == 24


def test_held_out_sentences_appear_only_in_the_test_split(splits):
    held_out = {text for texts in HELD_OUT_EVIDENCE.values() for text in texts}
    for split, examples in splits.items():
        shown = {text for e in examples for item in e.profile for text in held_out if text in item["text"]}
        assert (shown == held_out) if split == "test" else not shown
        assert {e.wording for e in examples} == ({"seen", "held_out"} if split == "test" else {"seen"})


def test_test_split_is_balanced_by_construction(splits):
    test = splits["test"]
    held_out = [e for e in test if e.wording == "held_out"]
    per_sentence = Counter(map(sentence, held_out))
    assert len(per_sentence) == 24 and min(per_sentence.values()) >= 8
    assert max(per_sentence.values()) == min(per_sentence.values())
    for subset in (test, held_out, [e for e in test if e.wording == "seen"]):
        assert len(set(Counter(e.fact for e in subset).values())) == 1
        assert len(set(Counter(e.options.index(e.answer) for e in subset).values())) == 1
        assert len(set(Counter((e.family, e.fact) for e in subset).values())) == 1
    for split in ("train", "val"):
        counts = Counter(map(sentence, splits[split]))
        assert len(counts) == 3 * SEEN_WORDINGS and len(set(counts.values())) == 1


def test_fields_are_consistent(splits):
    for example in (e for examples in splits.values() for e in examples):
        assert set(example.inputs().keys()) == {"request", "profile"}
        assert len(example.options) == len(set(example.options)) == OPTIONS_PER_REQUEST
        assert example.answer in example.options and example.answer in example.output
        assert all(f"({i}) {option}" in example.request for i, option in enumerate(example.options, start=1))
        assert example.answer == FAMILIES[example.family]["options"][example.fact]
        assert example.evidence == FACTS[example.fact]["evidence"][example.traits["wording"]]
        assert sum(example.evidence in item["text"] for item in example.profile) == 1
        assert len(example.profile) == 4


def test_no_evidence_sentence_shares_a_content_word_with_any_request_or_option():
    request_words = set()
    for family in FAMILIES.values():
        request_words |= content_words(f"{family['question']} The options: Write my recommendation.")
        for option in family["options"].values():
            request_words |= content_words(option)
    texts = [*(text for spec in FACTS.values() for text in spec["evidence"]), *DISTRACTORS]
    assert {text: content_words(text) & request_words for text in texts if content_words(text) & request_words} == {}


def constant(example, choose):
    """The user's style around the option ``choose(example)`` picks."""
    traits = example.traits
    opening = FAMILIES[example.family]["opening"]
    return dspy.Prediction(response=f"{traits['greeting']} {opening} {choose(example)}. {traits['sign_off']}")


SHORTCUTS = {
    **{f"always {f}": functools.partial(lambda fact, e: FAMILIES[e.family]["options"][fact], f) for f in FACTS},
    "always first": lambda e: e.options[0],
    "always last": lambda e: e.options[-1],
    "always longest": lambda e: max(e.options, key=len),
    "always shortest": lambda e: min(e.options, key=len),
}


def test_policies_and_shortcuts_score_as_designed(splits):
    test = splits["test"]
    held_out = [e for e in test if e.wording == "held_out"]
    print("\nimplicit_choice_v2 test split, policies without an LM (ROUGE-L / option accuracy):")
    for policy in POLICIES:
        rouge = mean(rouge_l(e, policy_response(e, policy)) for e in test)
        accuracy = mean(option_accuracy(e, policy_response(e, policy)) for e in test)
        print(f"  {policy:12s} {rouge:.3f} / {accuracy:.3f}")
    for subset in (test, held_out):
        accuracy = {p: mean(option_accuracy(e, policy_response(e, p)) for e in subset) for p in POLICIES}
        assert accuracy["oracle"] == accuracy["right_option"] == 1 and accuracy["all_options"] == 0
        assert accuracy["lexical"] <= CHANCE + 0.05
        for name, choose in SHORTCUTS.items():
            score = mean(option_accuracy(e, constant(e, choose)) for e in subset)
            assert abs(score - CHANCE) <= 0.03, name
    assert mean(rouge_l(e, policy_response(e, "oracle")) for e in test) == 1
