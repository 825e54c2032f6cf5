r"""An offline hindsight teacher for real data: notes that explain a real output from the user's profile.

REST-PG's hindsight notes come from a large teacher LM that reads the request, the profile and the real output. No
such model runs offline here, and the embedded 135M student writes poor notes about itself. This teacher **stands in
for a large teacher LM** on any task whose examples have a profile and an output (LongLaMP abstracts, reviews,
topics): it measures instead of reading. Its notes say

* which profile items the output draws on (the items sharing the most content words with it, cited by number),
* the terms and phrases the output shares with those items,
* what the output looks like: its length against the user's earlier items, its person, how it opens and how many
  sentences it has, whether it reports numbers,

and never copy the output: no run of more than 8 of its words that the profile does not also contain, and such
copied runs longer than 3 words cover at most a quarter of the output's words in total (:func:`copied_runs`). The
notes are deterministic (the same prompt, the same notes) and, like every teacher, only see the hindsight prompt.

It is a ``dspy.LM`` (a custom DSPy engine) usable wherever a teacher LM goes (``RESTPG.compile(..., teacher=...)``,
``teacher: evidence`` in a table config). It reads the hindsight prompt
(:class:`~restpg_dspy.programs.signatures.HindsightReasoning`) as this package's completion adapter renders it, and
refuses any other with :class:`EvidenceTeacherError`.

Example:
    >>> from restpg_dspy.data import evidence_teacher
    >>> teacher = evidence_teacher()
    >>> teacher.model
    'evidence-teacher/notes1'
    >>> profile = ("[1] Title: Sparse coding of speech\nAbstract: We learn sparse codes for speech recognition.\n\n"
    ...            "[2] Title: Graph search\nAbstract: We study search on large graphs.")
    >>> print(teacher.engine.notes(profile, "Robust speech codes",
    ...                            "We propose sparse codes for noisy speech recognition, with 12% fewer errors."))
    - Item [1] is closest to what they wrote: it shares the terms "sparse codes", "speech recognition".
    - Length: about 10 words in 1 sentence, longer than their earlier items (about 6 words).
    - Voice: first person plural ("we").
    - Opening: it starts with "We propose".
    - It reports numbers.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from restpg_dspy.errors import UsageError

# Part of the model id: bump it whenever the notes change, so no cache or run directory mixes two versions.
NOTES_VERSION = 1
MAX_COPIED_RUN = 8  # output words in a row the notes may repeat, when the profile also has them
LONG_RUN = 3  # copied runs longer than this ...
MAX_LONG_RUN_SHARE = 0.25  # ... may cover at most this share of the output's words
MAX_ITEMS = 3
MAX_PHRASES = 6
_ITEM = re.compile(r"(?m)^\[(\d+)\] ")
_WORD = re.compile(r"\w+")
_LABEL = re.compile(r"(?m)^[A-Z][\w ]{0,30}: ")  # a rendered item's field labels ("Title: ", "Abstract: ")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


class EvidenceTeacherError(UsageError):
    """The evidence teacher was given a prompt it cannot read (not a hindsight prompt with a profile)."""


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: the unit of overlap and of the copy limit."""
    return _WORD.findall(text.lower())


def copied_runs(notes: str, output: str) -> list[tuple[int, int]]:
    """Maximal runs of consecutive output words that the notes also hold in a row, as ``(start, length)``.

    Example:
        >>> copied_runs("it uses sparse codes for speech", "we use sparse codes for noisy speech")
        [(2, 3), (6, 1)]
    """
    said, out = words(notes), words(output)
    said_text = f" {' '.join(said)} "
    runs, start = [], 0
    while start < len(out):
        length = 0
        while start + length < len(out) and f" {' '.join(out[start : start + length + 1])} " in said_text:
            length += 1
        if length:
            runs.append((start, length))
        start += max(length, 1)
    return runs


def within_copy_limit(notes: str, output: str, profile: str) -> bool:
    """Whether ``notes`` respect the copy limit for ``output`` (see the module docs)."""
    out, profile_words = words(output), " ".join(words(profile))
    long_words = 0
    for start, length in copied_runs(notes, output):
        if length > MAX_COPIED_RUN and f" {' '.join(out[start : start + length])} " not in f" {profile_words} ":
            return False
        if length > LONG_RUN:
            long_words += length
    return long_words <= MAX_LONG_RUN_SHARE * len(out)


def _content(tokens: list[str]) -> list[str]:
    return [w for w in tokens if w not in ENGLISH_STOP_WORDS and not w.isdigit() and len(w) > 2]


def _shared_phrases(output: list[str], item: list[str]) -> list[str]:
    """Bigrams of content words in both texts (most frequent in the output first), then single shared terms."""
    item_bigrams = {tuple(item[i : i + 2]) for i in range(len(item) - 1)}
    bigrams = Counter(
        tuple(output[i : i + 2])
        for i in range(len(output) - 1)
        if tuple(output[i : i + 2]) in item_bigrams and len(_content(output[i : i + 2])) == 2
    )
    phrases = [" ".join(b) for b, _ in sorted(bigrams.items(), key=lambda kv: (-kv[1], kv[0]))]
    in_phrases = {w for p in phrases for w in p.split()}
    terms = Counter(w for w in _content(output) if w in set(item) and w not in in_phrases)
    return phrases + [t for t, _ in sorted(terms.items(), key=lambda kv: (-kv[1], kv[0]))]


def _sentences(text: str) -> int:
    """Sentences, counted by their ends (a last one without a full stop counts too)."""
    text = text.strip()
    ends = len(_SENTENCE_END.findall(text))
    return max(1, ends + (not text.endswith((".", "!", "?"))))


class EvidenceEngine:
    """DSPy engine behind :func:`evidence_teacher`."""

    model_id = f"evidence-teacher/notes{NOTES_VERSION}"

    def notes(self, profile: str, request: str, output: str) -> str:
        """The hindsight notes for one example, from its rendered profile (``[n] ...`` items), request and output.

        Raises:
            EvidenceTeacherError: the profile has no numbered items, or the output is empty.
        """
        starts = list(_ITEM.finditer(profile))
        if not starts:
            raise EvidenceTeacherError(
                "the profile shows no numbered items ('[1] ...'); the evidence teacher explains outputs from the "
                "profile a program of this package renders"
            )
        out = words(output)
        if not out:
            raise EvidenceTeacherError("the expected output is empty: there is nothing to explain")
        items = {
            int(m.group(1)): profile[m.end() : starts[i + 1].start() if i + 1 < len(starts) else len(profile)]
            for i, m in enumerate(starts)
        }
        item_words = {number: words(_LABEL.sub("", text)) for number, text in items.items()}
        wanted = set(_content(out))
        overlap = {n: len(wanted & set(_content(w))) for n, w in item_words.items()}
        cited = sorted((n for n in items if overlap[n] > 0), key=lambda n: (-overlap[n], n))[:MAX_ITEMS]
        # The user's earlier outputs: each item's last field (an abstract after its title, a review after its
        # product), the part an output of the task compares with.
        lengths = [len(words(_LABEL.split(text)[-1])) for text in items.values()]
        lengths = [n for n in lengths if n]
        usual = statistics.median(lengths) if lengths else 0
        size = "longer than" if len(out) > 1.25 * usual else "shorter than" if len(out) < 0.8 * usual else "as long as"
        count = _sentences(output)
        traits = [
            f"- Length: about {_round(len(out))} words in {count} sentence{'s' * (count != 1)}, {size} their earlier "
            f"items (about {_round(usual)} words).",
            f"- Voice: {_person(out)}.",
            f'- Opening: it starts with "{" ".join(output.split()[:2]).strip(".,;:")}".',
            *(["- It reports numbers."] if any(ch.isdigit() for ch in output) else []),
        ]
        if not cited:
            return "\n".join(["- No earlier item shares its terms: it is on a new subject for this user.", *traits])
        phrases: list[str] = []
        for number in cited:
            phrases += [p for p in _shared_phrases(out, item_words[number]) if p not in phrases]
        kept: list[str] = []
        for phrase in phrases:  # each shared phrase is said only while the notes stay within the copy limit
            trial = "\n".join([_items_line(cited, [*kept, phrase]), *traits])
            if len(kept) < MAX_PHRASES and within_copy_limit(trial, output, profile):
                kept.append(phrase)
        return "\n".join([_items_line(cited, kept), *traits])

    def complete(self, request: Any) -> Response:
        user = [message for message in request.messages if message.role == "user"]
        fields = parse_fields((user[-1].text or "") if user else "")
        missing = [name for name in ("profile", "request", "expected_output") if name not in fields]
        if missing:
            raise EvidenceTeacherError(
                f"the prompt has no {missing} section(s): the evidence teacher reads hindsight prompts as this "
                "package's CompletionAdapter renders them (REST-PG's teacher stage does)"
            )
        text = self.notes(fields["profile"], fields["request"], fields["expected_output"])
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            # Counted in words: the teacher has no tokenizer.
            usage=Usage(input_tokens=sum(len(v.split()) for v in fields.values()), output_tokens=len(text.split())),
        )

    def dump_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> EvidenceEngine:
        return cls()


def parse_fields(prompt: str) -> dict[str, str]:
    """The input fields of a hindsight prompt as this package's
    :class:`~restpg_dspy.programs.adapter.CompletionAdapter` renders it (``Profile:``, ``Request:`` and ``Expected
    output:`` sections, then the instruction to write), by field name; fields not found are left out."""
    from restpg_dspy.programs.signatures import HindsightReasoning

    names = list(HindsightReasoning.input_fields)
    titles = "|".join(re.escape(name.replace("_", " ").capitalize()) for name in names)
    marks = list(re.finditer(rf"(?:^|\n\n)({titles}):\n", prompt))
    fields = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(prompt)
        text = prompt[mark.end() : end]
        if i + 1 == len(marks):  # the last section ends where the instruction to write begins
            text = re.split(r"\n\nWrite the \w", text)[0]
        fields[mark.group(1).lower().replace(" ", "_")] = text.strip()
    return fields


def _items_line(cited: list[int], phrases: list[str]) -> str:
    marks = [f"[{n}]" for n in cited]
    numbers = f"{', '.join(marks[:-1])} and {marks[-1]}" if len(marks) > 1 else marks[0]
    subject = f"Item {numbers} is" if len(cited) == 1 else f"Items {numbers} are"
    shared = f": it shares the terms {', '.join(f'{chr(34)}{p}{chr(34)}' for p in phrases)}" if phrases else ""
    return f"- {subject} closest to what they wrote{shared}."


def _round(count: float) -> int:
    return int(round(count, -1)) if count >= 10 else int(count)


def _person(out: list[str]) -> str:
    counts = Counter(out)
    plural, singular = counts["we"] + counts["our"] + counts["us"], counts["i"] + counts["my"] + counts["me"]
    if plural >= max(1, singular):
        return 'first person plural ("we")'
    if singular:
        return 'first person singular ("I")'
    return "impersonal (no first person)"


def evidence_teacher() -> dspy.LM:
    """A ``dspy.LM`` writing evidence-based hindsight notes for any task with a profile (see the module docs): a
    deterministic stand-in for a large teacher LM."""
    engine = EvidenceEngine()
    # Not cached: the notes take microseconds, and a cache could only ever serve stale ones.
    return dspy.LM(engine.model_id, engine=engine, temperature=0.0, max_tokens=256, cache=False)
