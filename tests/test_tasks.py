import pytest

from restpg_dspy.errors import UsageError
from restpg_dspy.tasks import TASKS, detect_task


@pytest.mark.parametrize(
    ("task", "item", "in_request", "output"),
    [
        ("abstract_generation", {"title": "On sparsity", "abstract": "We study."}, '"On sparsity"', "We study."),
        ("product_review", {"overall": 5, "summary": "Great", "reviewText": "Loved it."}, "rating 5", "Loved it."),
        ("topic_writing", {"input": "My trip", "output": "We went."}, '"My trip"', "We went."),  # older key names
        ("email", {"title": "Lunch", "text": "See you at noon."}, '"Lunch"', "See you at noon."),
        ("synthetic", {"text": "Hi all, new bike!", "date": "2024-01-01"}, "what is new", "Hi all, new bike!"),
    ],
)
def test_a_profile_item_becomes_a_request_of_its_task_and_its_text_the_output(task, item, in_request, output):
    request, answer = TASKS[task].item_example(item)
    assert in_request in request and answer == output and output not in request


def test_an_item_missing_a_field_makes_no_request_and_a_generic_task_refuses_by_name():
    assert TASKS["abstract_generation"].item_example({"title": "", "abstract": "We study."}) is None
    assert TASKS["email"].item_example({"title": "Lunch"}) is None
    with pytest.raises(UsageError, match="task 'generic' does not say how a profile item becomes a request"):
        detect_task([{"note": "hello"}]).item_example({"note": "hello"})
