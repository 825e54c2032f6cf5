"""Rendering retrieved profile items into a prompt section that fits a token budget.

Each item is cut to ``item_tokens`` and the section to ``profile_tokens``; every cut is counted, so a run can
report how much of the users' writing its prompts really showed.

Example:
    >>> from restpg_dspy.programs.profile import ProfileFormatter
    >>> from restpg_dspy.tasks import TASKS
    >>> item = {"text": "one two three four five six seven eight nine ten"}
    >>> print(ProfileFormatter(item_tokens=10).render([item], TASKS["synthetic"]))
    [1] Post: one two three four …
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from restpg_dspy.tasks import TaskFormat

EMPTY_PROFILE = "(This user has no earlier writing to draw on.)"
_APPROXIMATE_TOKEN = re.compile(r"\w+|[^\w\s]")
# Fewer tokens than this cannot show an item usefully (its marker and label alone take several).
_SMALLEST_ITEM = 8


def token_spans(text: str, tokenizer: Any = None) -> list[tuple[int, int]]:
    """Character spans of the tokens of ``text``: the model's tokenizer when given, else words and punctuation."""
    if tokenizer is None:
        return [m.span() for m in _APPROXIMATE_TOKEN.finditer(text)]
    return [
        tuple(span) for span in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ]


def truncate_tokens(text: str, limit: int, tokenizer: Any = None) -> tuple[str, bool]:
    """``text`` cut to about ``limit`` tokens, the last one an ellipsis marking the cut, and whether it was cut."""
    spans = token_spans(text, tokenizer)
    if len(spans) <= limit:
        return text, False
    for keep in range(limit - 1, 0, -1):  # the ellipsis may take more than one token: re-count
        cut = text[: spans[keep - 1][1]].rstrip() + " …"
        if len(token_spans(cut, tokenizer)) <= limit:
            return cut, True
    return "", True


class ProfileFormatter:
    """Turns retrieved items into numbered, labelled text within a token budget.

    Args:
        item_tokens: Most tokens shown per item (longer items are cut and counted).
        profile_tokens: Most tokens for the whole section (items past it are dropped and counted).

    Attributes:
        stats: Counters: ``prompts``, ``items_shown``, ``items_truncated``, ``items_dropped``, ``empty_profiles``.
    """

    def __init__(self, item_tokens: int = 256, profile_tokens: int = 1024):
        self.item_tokens = item_tokens
        self.profile_tokens = profile_tokens
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> ProfileFormatter:
        # Program copies (one per thread in dspy.Parallel/Evaluate) share one formatter, so its stats add up.
        return self

    def render(
        self, items: list[dict[str, Any]], task: TaskFormat, tokenizer: Any = None, budget: int | None = None
    ) -> str:
        """Render ``items`` for ``task``; ``budget`` lowers the section's token limit (e.g. to fit a context)."""
        limit = min(self.profile_tokens, budget) if budget is not None else self.profile_tokens
        blocks, counts = [], Counter(prompts=1)
        for item in items:
            text = "\n".join(f"{label}: {value.strip()}" for label, value in task.render(item))
            shown = "\n\n".join([*blocks, ""]) if blocks else ""
            room = min(self.item_tokens, limit - len(token_spans(shown, tokenizer)))
            block, cut = truncate_tokens(f"[{len(blocks) + 1}] {text}", room, tokenizer)
            overflow = len(token_spans(shown + block, tokenizer)) - limit  # tokens can merge across the seam
            if overflow > 0:
                block, cut = truncate_tokens(block, room - overflow, tokenizer)[0], True
            if room < _SMALLEST_ITEM or not block:
                counts["items_dropped"] += 1
                continue
            counts["items_truncated"] += cut
            counts["items_shown"] += 1
            blocks.append(block)
        if not items:
            counts["empty_profiles"] += 1
        with self._lock:
            self.stats.update(counts)
        return "\n\n".join(blocks) if blocks else EMPTY_PROFILE
