"""Properties of the implicit_choice task, checked without any LM."""

import dspy
import pytest

from restpg_dspy.data import synthetic
from restpg_dspy.data.implicit_choice import (
    DISTRACTORS,
    FACTS,
    FAMILIES,
    OPTIONS_PER_REQUEST,
    POLICIES,
    SEEN_WORDINGS,
    policy_response,
)
from restpg_dspy.data.personas import GREETINGS, PHRASES, SIGN_OFFS
from restpg_dspy.evals import notes_choice, option_accuracy, rouge_l
from restpg_dspy.evals.choice import content_words, named_options

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def splits():
    return {split: synthetic(split, seed=0) for split in SPLITS}


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def test_same_seed_gives_identical_data_and_other_seeds_differ():
    first = [e.toDict() for e in synthetic("test", seed=5)]
    assert first == [e.toDict() for e in synthetic("test", seed=5)]
    assert first != [e.toDict() for e in synthetic("test", seed=6)]


def test_users_are_disjoint_across_splits(splits):
    ids = {split: {e.user_id for e in examples} for split, examples in splits.items()}
    names = {split: {e.traits["name"] for e in examples} for split, examples in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b] and not names[a] & names[b]


def test_default_sizes_fit_the_ordering_experiment(splits):
    test = splits["test"]
    assert len(splits["train"]) >= 128 and len(test) >= 240 and len({e.user_id for e in test}) >= 80


def test_fields_are_consistent(splits):
    for example in (e for examples in splits.values() for e in examples):
        assert set(example.inputs().keys()) == {"request", "profile"}
        assert len(example.options) == len(set(example.options)) == OPTIONS_PER_REQUEST
        assert example.answer in example.options and example.answer in example.output
        assert all(f"({i}) {option}" in example.request for i, option in enumerate(example.options, start=1))
        assert example.answer == FAMILIES[example.family]["options"][example.fact]
        assert example.aspect == FACTS[example.fact]["aspect"]
        assert len(example.profile) == 4
        evidence = FACTS[example.fact]["evidence"][example.traits["wording"]]
        assert sum(evidence in item["text"] for item in example.profile) == 1


def test_held_out_wordings_appear_only_in_the_test_split(splits):
    for split, examples in splits.items():
        wordings = {e.wording for e in examples}
        assert wordings == ({"seen", "held_out"} if split == "test" else {"seen"})
        for example in examples:
            assert (example.traits["wording"] >= SEEN_WORDINGS) == (example.wording == "held_out")
    held_out = mean(e.wording == "held_out" for e in splits["test"])
    assert 0.4 <= held_out <= 0.6


def test_no_profile_text_shares_a_content_word_with_any_request_or_option():
    request_words = set()
    for family in FAMILIES.values():
        request_words |= content_words(f"{family['question']} The options: Write my recommendation.")
        for option in family["options"].values():
            request_words |= content_words(option)
    profile_texts = [
        *(wording for fact in FACTS.values() for wording in fact["evidence"]),
        *DISTRACTORS,
        *GREETINGS,
        *(sign_off.format(name="") for sign_off in SIGN_OFFS),
        *PHRASES,
    ]
    shared = {text: content_words(text) & request_words for text in profile_texts}
    assert not {text: words for text, words in shared.items() if words}


def test_every_option_is_recognised_only_by_its_own_words():
    for family in FAMILIES.values():
        options = list(family["options"].values())
        for option in options:
            assert named_options(f"I pick {option}.", options) == [option]


def test_lexical_shortcut_scores_chance_and_policies_are_ordered(splits):
    test = splits["test"]
    rouge = {policy: mean(rouge_l(e, policy_response(e, policy)) for e in test) for policy in POLICIES}
    accuracy = {policy: mean(option_accuracy(e, policy_response(e, policy)) for e in test) for policy in POLICIES}
    print("\nimplicit_choice test split, policies without an LM (ROUGE-L / option accuracy):")
    for policy in POLICIES:
        print(f"  {policy:12s} {rouge[policy]:.3f} / {accuracy[policy]:.3f}")
    # No option shares a word with the profile, so the shortcut ties and picks the first listed: chance.
    assert accuracy["lexical"] == accuracy["style"] <= 1 / OPTIONS_PER_REQUEST + 0.05
    assert accuracy["all_options"] == 0 and accuracy["right_option"] == accuracy["oracle"] == 1
    assert rouge["template"] < rouge["style"] < rouge["right_option"] < rouge["oracle"] == 1
    assert rouge["all_options"] < rouge["right_option"]


def test_option_accuracy_needs_options_and_a_response():
    example = synthetic("val", seed=0, users=1, requests_per_user=1)[0]
    with pytest.raises(ValueError, match="'options'"):
        option_accuracy(dspy.Example(output="x"), dspy.Prediction(response="x"))
    with pytest.raises(ValueError, match="'response'"):
        option_accuracy(example, dspy.Prediction(text="x"))


def test_notes_are_graded_on_the_options_they_name_and_the_posts_they_cite():
    example = synthetic("val", seed=0, users=1, requests_per_user=1)[0]
    right, wrong = example.answer, next(o for o in example.options if o != example.answer)
    grades = {
        "- Post [2] says a lot. So: " + right: (True, False, False, True),
        f"[2] Post: copied text\nEither {right} or {wrong}.": (False, True, False, True),
        "Hello!\n\n[1]\n\n[2]\n\n[3": (False, False, True, False),  # a bare list of numbers cites nothing
        f"Post [1] then {wrong}": (False, True, False, True),
    }
    for notes, expected in grades.items():
        graded = notes_choice(example, notes)
        assert tuple(graded.values()) == expected, notes
    assert list(graded) == ["names_answer_only", "names_wrong_option", "names_no_option", "cites_post"]
    with pytest.raises(ValueError, match="'options'"):
        notes_choice(dspy.Example(output="x"), "notes")


@pytest.mark.parametrize("bad", [{"task": "poetry"}, {"requests_per_user": 4}])
def test_bad_settings_are_named(bad):
    with pytest.raises(ValueError, match=r"poetry|requests_per_user"):
        synthetic("train", seed=0, **bad)


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown policy 'guess'"):
        policy_response(synthetic("val", seed=0, users=1)[0], "guess")
