import random

import pytest

from restpg_dspy.retrieval import BM25, Dense, Recency
from restpg_dspy.tasks import TASKS, detect_task

PROFILE = [
    {"text": "I love hiking in the Alps with my friends.", "date": "2024-01-02"},
    {"text": "My sourdough bread finally rose after three tries!", "date": "2024-03-03"},
    {"text": "The new espresso machine makes great coffee.", "date": "2024-02-01"},
]


def test_bm25_ranks_lexical_matches_first_and_respects_k():
    found = BM25(k=2)("bake a sourdough bread loaf", PROFILE)
    assert len(found) == 2 and found[0] is PROFILE[1]


def test_empty_profile_and_k_larger_than_profile():
    assert BM25(k=3)("anything", []) == []
    assert len(BM25(k=10)("coffee", PROFILE)) == 3


def test_stop_word_only_profile_falls_back_to_profile_order():
    profile = [{"text": "the"}, {"text": "a"}]
    assert BM25(k=1)("the", profile) == [profile[0]]


def test_index_is_built_once_per_profile():
    retriever = BM25(k=1)
    for query in ("coffee", "bread", "hiking"):
        retriever(query, PROFILE)
    assert retriever.index_builds == 1


def test_ten_thousand_items_index_once():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    profile = [{"text": " ".join(rng.choices(words, k=50))} for _ in range(10_000)]
    profile[1234]["text"] += " zebra giraffe"
    retriever = BM25(k=3)
    assert retriever("zebra giraffe", profile)[0] is profile[1234]
    for i in range(5):
        retriever(f"w{i}", profile)
    assert retriever.index_builds == 1


def test_dense_retrieval_matches_meaning():
    assert Dense(k=1)("baking a loaf", PROFILE)[0] is PROFILE[1]


def test_recency_returns_latest_first():
    assert [item["date"] for item in Recency(k=2)("ignored", PROFILE)] == ["2024-03-03", "2024-02-01"]


def test_task_fields_choose_what_is_indexed():
    profile = [
        {"title": "Graph networks", "abstract": "we study message passing"},
        {"title": "Kalman", "abstract": "we filter"},
    ]
    task = detect_task(profile)
    assert task is TASKS["abstract_generation"]
    assert BM25(k=1)("message passing", profile, task)[0] is profile[0]
    assert detect_task([{"input": "s", "output": "c"}]).name == "topic_writing"


def test_negative_k_is_refused():
    with pytest.raises(ValueError, match="k must be >= 0"):
        BM25(k=-1)
