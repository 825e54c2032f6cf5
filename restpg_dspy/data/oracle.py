r"""An oracle teacher for the ``implicit_choice`` task: hindsight notes from the generator's own latent traits.

REST-PG's hindsight reasoning comes from a large teacher LM (Gemma 7B in the paper), which cannot run offline on a
laptop, and the embedded 135M model writes empty or generic notes. This oracle **stands in for that large teacher**
on the synthetic task only: it knows how the generator maps evidence wordings to life facts and facts to options,
and writes short notes citing only what the prompt shows (which post, what it implies, which option follows), e.g.::

    - Post [2] shows that this user does not eat meat.
    - So what matters most to them: meat-free food.
    - The option that fits: the bistro with a fully meat-free menu.

It is a ``dspy.LM`` (a custom DSPy engine), usable wherever a teacher LM goes. It never invents notes: a prompt that
shows no evidence post of the task, or none of the options that follow from it, raises :class:`OracleError`.
It explains both versions of the task (``implicit_choice`` and ``implicit_choice_v2``). Controls: ``noise=`` makes a
deterministic fraction of the notes name a wrong fact (and its option, citing a distractor post drawn by the same
hash); the student as its own teacher is the other control (``teacher=None``).

Example:
    >>> from restpg_dspy.data import oracle_teacher, synthetic
    >>> teacher = oracle_teacher()
    >>> teacher.model
    'oracle/implicit_choice-notes2-noise0-seed0'
    >>> example = synthetic("test", seed=0, users=1, requests_per_user=1)[0]
    >>> posts = "\n".join(f"[{n}] Post: {item['text']}" for n, item in enumerate(example.profile, start=1))
    >>> print(teacher.engine.notes(f"Profile:\n{posts}\n\nRequest:\n{example.request}"))
    - Post [4] shows that this user does not eat meat.
    - So what matters most to them: meat-free food.
    - The option that fits: the bistro with a fully meat-free menu.
    >>> teacher.engine.notes("Request: which cake should I bake?")
    Traceback (most recent call last):
    ...
    restpg_dspy.data.oracle.OracleError: the prompt shows no evidence post of the implicit_choice task; ...
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from restpg_dspy.data import implicit_choice, implicit_choice_v2
from restpg_dspy.data.implicit_choice import FAMILIES
from restpg_dspy.errors import UsageError

IMPLICATIONS = {
    "vegetarian": "this user does not eat meat",
    "cold": "this user lives somewhere very cold",
    "dog": "this user has a dog",
}
_POST_MARKER = re.compile(r"\[(\d+)\]")
# Part of the model id: bump it whenever the notes change, so no cache or run directory mixes two versions.
# 2: a noisy note cites a distractor post drawn by the same hash as its wrong fact (1 always cited the first one).
NOTES_VERSION = 2
# Every evidence sentence of both versions of the task, and the fact it implies (version 2 extends version 1).
EVIDENCE = {
    sentence: fact
    for facts in (implicit_choice.FACTS, implicit_choice_v2.FACTS)
    for fact, spec in facts.items()
    for sentence in spec["evidence"]
}


class OracleError(UsageError):
    """The oracle was asked about a prompt it cannot explain from the generator's traits."""


class OracleEngine:
    """DSPy engine behind :func:`oracle_teacher`.

    Args:
        noise: Fraction of examples (chosen by a hash of the seed and the prompt) whose notes name a wrong fact, one
            of the other offered options' needs, and cite a distractor post, both drawn by the same hash.
        seed: Decides, with the prompt, which examples are noisy and which wrong fact they get.
    """

    def __init__(self, noise: float = 0.0, seed: int = 0):
        if not 0.0 <= noise <= 1.0:
            raise UsageError(f"noise must be a fraction in [0, 1], not {noise}")
        self.noise = noise
        self.seed = seed

    @property
    def model_id(self) -> str:
        return f"oracle/implicit_choice-notes{NOTES_VERSION}-noise{self.noise:g}-seed{self.seed}"

    def notes(self, prompt: str) -> str:
        """The hindsight notes for one prompt (its last user message).

        Raises:
            OracleError: no evidence wording of the task, or no option of the evidence's fact, is in the prompt.
        """
        found = sorted((prompt.find(sentence), fact) for sentence, fact in EVIDENCE.items() if sentence in prompt)
        if not found:
            raise OracleError(
                "the prompt shows no evidence post of the implicit_choice task; the oracle teacher only explains "
                "examples of restpg_dspy.data.synthetic(task='implicit_choice' or 'implicit_choice_v2'), with the "
                "whole profile shown, and never invents notes"
            )
        position, fact = found[0]
        offered = {
            f: option for family in FAMILIES.values() for f, option in family["options"].items() if option in prompt
        }
        if fact not in offered:
            raise OracleError(
                f"the prompt shows evidence of {fact!r} but none of the options that serve it; the oracle teacher "
                "only explains implicit_choice requests"
            )
        markers = [(m.start(), m.group(1)) for m in _POST_MARKER.finditer(prompt)]
        post = next((number for start, number in reversed(markers) if start < position), None)
        others = sorted(f for f in offered if f != fact)
        draw = int(hashlib.sha256(f"{self.seed}:{prompt}".encode()).hexdigest()[:8], 16) / 16**8
        if others and draw < self.noise:
            # One uniform draw in [0, 1) picks the wrong fact and, through its finer digits, the distractor cited.
            position = draw / self.noise * len(others)
            fact = others[int(position) % len(others)]
            distractors = sorted({number for _, number in markers if number != post}, key=int)
            if distractors:
                post = distractors[int((position % 1) * len(distractors)) % len(distractors)]
        cited = f"Post [{post}]" if post else "An earlier post"
        return (
            f"- {cited} shows that {IMPLICATIONS[fact]}.\n"
            f"- So what matters most to them: {implicit_choice.FACTS[fact]['aspect']}.\n"
            f"- The option that fits: {offered[fact]}."
        )

    def complete(self, request: Any) -> Response:
        user = [message for message in request.messages if message.role == "user"]
        prompt = (user[-1].text or "") if user else ""
        text = self.notes(prompt)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            # Counted in words: the oracle has no tokenizer.
            usage=Usage(input_tokens=len(prompt.split()), output_tokens=len(text.split())),
        )

    def dump_state(self) -> dict[str, Any]:
        return {"noise": self.noise, "seed": self.seed}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> OracleEngine:
        return cls(**state)


def oracle_teacher(noise: float = 0.0, seed: int = 0) -> dspy.LM:
    """A ``dspy.LM`` that writes oracle hindsight notes for ``implicit_choice`` examples (see the module docs).

    Args:
        noise: Fraction of examples whose notes name a wrong fact (a control for teacher quality).
        seed: Which examples are noisy.
    """
    engine = OracleEngine(noise, seed)
    # Not cached: the notes are computed in microseconds, and a cache could only ever serve stale ones.
    return dspy.LM(engine.model_id, engine=engine, temperature=0.0, max_tokens=128, cache=False)
