"""Per-task knowledge of profile items: which fields a prompt shows, which fields retrieval indexes, which is a date.

Example:
    >>> from restpg_dspy.tasks import detect_task
    >>> detect_task([{"title": "On sparsity", "abstract": "We study ..."}]).name
    'abstract_generation'
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from restpg_dspy.errors import UsageError


@dataclass(frozen=True)
class TaskFormat:
    """How the profile items of one task are shown and searched.

    Attributes:
        name: Task name (LongLaMP's config prefix, ``"email"``, ``"synthetic"`` or ``"generic"``).
        fields: ``(key, label)`` pairs shown in the prompt, in order; missing keys are skipped.
        index_fields: Keys whose text retrieval matches against the request.
        date_field: Key that orders items by time (for recency), if any.
        aliases: Older key names accepted for a field (``{"summary": "input"}`` reads ``input`` when ``summary`` is
            absent).
        repetition_controls: The task's default repetition controls of generation (``repetition_penalty``,
            ``no_repeat_ngram_size``; see :func:`restpg_dspy.with_repetition_controls`), chosen on the task's
            training records only; empty: none.
        item_request: How a profile item becomes a request of this task, a template over the item's keys
            (``'Generate an abstract for the title "{title}".'``), for training on a user's own history (see
            :class:`~restpg_dspy.optimizers.PersonalAdapters`); ``None``: the task's items cannot be requests.
        item_output: The key of the item's text that answers ``item_request``.
    """

    name: str
    fields: tuple[tuple[str, str], ...]
    index_fields: tuple[str, ...]
    date_field: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    repetition_controls: dict[str, Any] = field(default_factory=dict)
    item_request: str | None = None
    item_output: str | None = None

    def value(self, item: dict[str, Any], key: str) -> str:
        """The text of ``key`` in ``item`` (through its alias when absent), or ``""``."""
        value = item.get(key)
        if value is None and key in self.aliases:
            value = item.get(self.aliases[key])
        return "" if value is None else str(value)

    def index_text(self, item: dict[str, Any]) -> str:
        """The text retrieval matches a request against."""
        return " ".join(self.value(item, key) for key in self.index_fields).strip()

    def item_example(self, item: dict[str, Any]) -> tuple[str, str] | None:
        """The ``(request, output)`` pair a profile item makes (``None`` when a field it needs is empty).

        Raises:
            UsageError: the task does not say how its items become requests.
        """
        if self.item_request is None or self.item_output is None:
            raise UsageError(
                f"task {self.name!r} does not say how a profile item becomes a request (item_request, item_output)"
            )
        keys = [key for _, key, _, _ in string.Formatter().parse(self.item_request) if key]
        values = {key: self.value(item, key).strip() for key in keys}
        output = self.value(item, self.item_output).strip()
        if not output or not all(values.values()):
            return None
        return self.item_request.format(**values), output

    def render(self, item: dict[str, Any]) -> list[tuple[str, str]]:
        """``(label, text)`` pairs to show for ``item``, skipping empty fields."""
        shown = [(label, self.value(item, key)) for key, label in self.fields]
        return [(label, text) for label, text in shown if text.strip()]


TASKS: dict[str, TaskFormat] = {
    "abstract_generation": TaskFormat(
        "abstract_generation",
        (("title", "Title"), ("abstract", "Abstract")),
        ("title", "abstract"),
        "year",
        # Chosen on the 20 training records of the shared sample (benchmarks/repetition_controls.py --split train,
        # greedy, 320 tokens, RAGWriter k 2): of the settings looping in at most 10% of generations, the best ROUGE-L
        # (loop rate 0.05, ROUGE-L 0.155, against 1.00 and 0.149 without controls; any repetition_penalty >= 1.1
        # lowered ROUGE-L).
        repetition_controls={"no_repeat_ngram_size": 4},
        item_request='Generate an abstract for the title "{title}".',
        item_output="abstract",
    ),
    "product_review": TaskFormat(
        "product_review",
        (("overall", "Rating"), ("summary", "Summary"), ("reviewText", "Review")),
        ("summary", "reviewText"),
        item_request='Write the review you gave with the rating {overall} and the summary "{summary}".',
        item_output="reviewText",
    ),
    "topic_writing": TaskFormat(
        "topic_writing",
        (("summary", "Summary"), ("content", "Post")),
        ("summary", "content"),
        aliases={"summary": "input", "content": "output"},
        item_request='Write the content of a post that is summarised as "{summary}".',
        item_output="content",
    ),
    "email": TaskFormat(
        "email",
        (("title", "Subject"), ("text", "Email")),
        ("title", "text"),
        item_request='Write an email with the subject "{title}".',
        item_output="text",
    ),
    # A post has no request of its own: it is what the user wrote when asked for news of their life.
    "synthetic": TaskFormat(
        "synthetic",
        (("text", "Post"),),
        ("text",),
        "date",
        item_request="Write a short post telling your friends what is new with you.",
        item_output="text",
    ),
}


def detect_task(profile: list[dict[str, Any]]) -> TaskFormat:
    """Guess the task from the keys of the first profile item; unknown shapes get a generic format."""
    keys = set(profile[0]) if profile else set()
    for name, signature_keys in (
        ("abstract_generation", {"abstract"}),
        ("product_review", {"reviewText"}),
        ("topic_writing", {"content"}),
        ("topic_writing", {"input", "output"}),
        ("synthetic", {"text", "date"}),
        ("email", {"text"}),
    ):
        if signature_keys <= keys:
            return TASKS[name]
    text_keys = tuple(sorted(k for k in keys if isinstance(profile[0][k], str)))
    return TaskFormat("generic", tuple((k, k.replace("_", " ").capitalize()) for k in text_keys), text_keys)
