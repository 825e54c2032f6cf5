import re

import dspy
import pytest

from restpg_dspy.data import synthetic
from restpg_dspy.programs import (
    CompletionAdapter,
    NoPersonalization,
    PersonalizedResponse,
    PersonalizedWriter,
    ProfileFormatter,
    RAGWriter,
)
from restpg_dspy.programs.profile import EMPTY_PROFILE
from restpg_dspy.retrieval import BM25
from restpg_dspy.tasks import TASKS


def items_in(prompt: str) -> list[str]:
    return re.findall(r"^\[(\d+)\] ", prompt, flags=re.MULTILINE)


def test_adapter_formats_plain_text_and_takes_the_whole_completion():
    adapter = CompletionAdapter()
    inputs = {"profile": "[1] Post: hi", "reasoning": "- short", "request": "Write a note."}
    messages = adapter.format(PersonalizedResponse, [], inputs)
    assert messages[0]["role"] == "system" and "as this user would write it" in messages[0]["content"]
    user = messages[-1]["content"]
    assert user.index("Profile:") < user.index("Reasoning:") < user.index("Request:")
    assert user.endswith("Write the response (the text, written in this user's voice).")
    assert adapter.parse(PersonalizedResponse, "  Hey there!\n") == {"response": "Hey there!"}


def test_adapter_finetune_rows_match_the_served_prompt():
    adapter = CompletionAdapter()
    inputs = {"profile": "p", "reasoning": "r", "request": "q"}
    row = adapter.format_finetune_data(PersonalizedResponse, [], inputs, {"response": "answer"})
    assert row["messages"][:-1] == adapter.format(PersonalizedResponse, [], inputs)
    assert row["messages"][-1] == {"role": "assistant", "content": "answer"}


def test_adapter_refuses_several_output_fields():
    with pytest.raises(ValueError, match="exactly one output field"):
        CompletionAdapter().format(dspy.Signature("q -> a, b"), [], {"q": "x"})


def test_formatter_truncates_items_and_drops_past_the_budget():
    formatter = ProfileFormatter(item_tokens=10, profile_tokens=20)
    items = [{"text": "one two three four five six seven"}, {"text": "alpha beta gamma"}, {"text": "never shown"}]
    text = formatter.render(items, TASKS["synthetic"])
    assert text.startswith("[1] Post: one two three four …\n\n[2] Post: alpha beta gamma") and "never" not in text
    assert formatter.stats["items_truncated"] >= 1 and formatter.stats["items_dropped"] >= 1
    assert formatter.render([], TASKS["synthetic"]) == EMPTY_PROFILE
    assert formatter.stats["empty_profiles"] == 1


@pytest.fixture
def example():
    return synthetic("test", seed=0)[0]


def test_personalized_writer_shows_only_k_items_and_returns_reasoning_and_response(tiny_lm, example):
    writer = PersonalizedWriter(retriever=BM25(k=2))
    with dspy.context(lm=tiny_lm):
        prediction = writer(**example.inputs())
    assert isinstance(prediction.reasoning, str) and isinstance(prediction.response, str)
    assert len(prediction.retrieved) == 2
    reason_prompt, write_prompt = (entry["messages"][-1]["content"] for entry in tiny_lm.history[-2:])
    assert items_in(reason_prompt) == ["1", "2"] and items_in(write_prompt) == ["1", "2"]
    assert prediction.reasoning.strip() in write_prompt  # the response is written from the reasoning


def test_empty_profile_still_answers_and_says_so(tiny_lm, example):
    with dspy.context(lm=tiny_lm):
        prediction = RAGWriter(retriever=BM25(k=2))(request=example.request, profile=[])
    assert isinstance(prediction.response, str)
    assert EMPTY_PROFILE in tiny_lm.history[-1]["messages"][-1]["content"]


def test_huge_profile_stays_within_the_token_budget(tiny_lm, tiny_engine):
    profile = [{"text": f"post number {i} " + "words " * 300} for i in range(10_000)]
    writer = RAGWriter(retriever=BM25(k=50), formatter=ProfileFormatter(item_tokens=40, profile_tokens=100))
    with dspy.context(lm=tiny_lm):
        writer(request="post number 7", profile=profile)
    prompt = tiny_lm.history[-1]["messages"][-1]["content"]
    section = prompt.split("Profile:\n", 1)[1].split("\n\nRequest:", 1)[0]
    assert len(tiny_engine.loaded.tokenizer(section)["input_ids"]) <= 100
    assert writer.formatter.stats["items_dropped"] > 0 and writer.retriever.index_builds == 1


def test_no_personalization_never_shows_the_profile(tiny_lm, example):
    with dspy.context(lm=tiny_lm):
        prediction = NoPersonalization()(**example.inputs())
    assert prediction.retrieved == [] and "Profile:" not in tiny_lm.history[-1]["messages"][-1]["content"]


def test_program_parts_are_named_and_described():
    writer = PersonalizedWriter(retriever=BM25(k=2))
    clone = writer.deepcopy()  # one per thread in dspy.Parallel: the retrieval index and stats stay shared
    assert (
        clone.retriever is writer.retriever
        and clone.formatter is writer.formatter
        and clone.reason is not writer.reason
    )
    assert [name for name, _ in writer.named_predictors()] == ["reason", "write"]
    assert writer.describe()["retrieval"] == {"retriever": "BM25", "k": 2}


def test_each_step_has_its_own_token_budget(tiny_lm):
    writer = PersonalizedWriter(retriever=BM25(k=2), reasoning_max_tokens=3, response_max_tokens=5)
    lm = tiny_lm.copy(max_tokens=16, cache=False)
    writer.set_lm(lm)
    writer(**synthetic("test", seed=0, users=1, requests_per_user=1)[0].inputs())
    budgets = [(entry["kwargs"]["max_tokens"], entry["usage"]["completion_tokens"]) for entry in lm.history]
    assert [b for b, _ in budgets] == [3, 5] and all(used <= budget for budget, used in budgets)
    assert writer.describe()["reasoning_max_tokens"] == 3 and writer.describe()["response_max_tokens"] == 5


@pytest.mark.parametrize("budget", [0, -4, 2.5, True])
def test_budgets_must_be_positive_token_counts(budget):
    with pytest.raises(ValueError, match="reasoning_max_tokens must be a positive number of tokens"):
        PersonalizedWriter(reasoning_max_tokens=budget)
    with pytest.raises(ValueError, match="response_max_tokens must be a positive number of tokens"):
        RAGWriter(response_max_tokens=budget)
