"""What every synthetic user has: a name from a pool split disjointly between train, val and test, and a writing
style (a greeting, a sign-off with their first name and a favourite phrase) that each of their posts shows.

Example:
    >>> from restpg_dspy.data.personas import split_names
    >>> len(split_names(0, "test", 3))
    3
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from restpg_dspy.errors import UsageError

FIRST_NAMES = [
    "Sam",
    "Ada",
    "Lena",
    "Omar",
    "Priya",
    "Tomas",
    "Mei",
    "Jonas",
    "Rosa",
    "Kofi",
    "Ines",
    "Hugo",
    "Nadia",
    "Felix",
    "Yara",
    "Theo",
    "Maya",
    "Ivan",
    "Zoe",
    "Ravi",
    "Elsa",
    "Diego",
    "Noor",
    "Finn",
]
LAST_NAMES = ["Berg", "Okafor", "Novak", "Silva", "Tanaka", "Moreau", "Kaur", "Larsen", "Rossi", "Haddad"]
GREETINGS = [
    "Hey folks!",
    "Hello friends,",
    "Hi everyone,",
    "Greetings, all.",
    "Howdy, y'all!",
    "Good day, readers,",
    "Morning, crew!",
    "Dear friends,",
]
SIGN_OFFS = [
    "Cheers, {name}",
    "Warmly, {name}",
    "Take care, {name}",
    "All the best, {name}",
    "Until next time, {name}",
    "Stay curious, {name}",
    "Hugs, {name}",
    "Onward, {name}",
]
PHRASES = [
    "to be honest",
    "in a nutshell",
    "believe it or not",
    "for what it's worth",
    "hands down",
    "no kidding",
    "all things considered",
    "mark my words",
]

# Disjoint slices of the shuffled name pool: a user can never appear in two splits, whatever the split sizes.
NAME_SLICES = {"train": (0, 120), "val": (120, 160), "test": (160, 240)}


@dataclass(frozen=True)
class Style:
    """How one user opens, closes and colours every post."""

    greeting: str
    sign_off: str
    phrase: str

    @classmethod
    def draw(cls, name: str, rng: random.Random) -> Style:
        return cls(
            greeting=rng.choice(GREETINGS),
            sign_off=rng.choice(SIGN_OFFS).format(name=name.split()[0]),
            phrase=rng.choice(PHRASES),
        )


def sentence(phrase: str, rest: str) -> str:
    """``rest`` led by the user's favourite ``phrase``: ``sentence("hands down", "it works.")``."""
    return f"{phrase[0].upper()}{phrase[1:]}, {rest}"


def split_names(
    seed: int, split: str, count: int, *, slices: dict[str, tuple[int, int]] = NAME_SLICES
) -> list[tuple[int, str]]:
    """``(index, full name)`` of the first ``count`` users of ``split``; indices and names never repeat across splits.

    Args:
        seed: Shuffles the name pool.
        split: ``train``, ``val`` or ``test``.
        count: Users wanted.
        slices: Each split's disjoint ``(start, stop)`` range of the shuffled pool (a task may size its splits).

    Raises:
        UsageError: an unknown split, or more users than the split has room for.
    """
    if split not in slices:
        raise UsageError(f"unknown split {split!r}; choose one of {list(slices)}")
    start, stop = slices[split]
    if count > stop - start:
        raise UsageError(f"the {split} split has room for {stop - start} synthetic users, {count} were asked for")
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    random.Random(f"restpg-synthetic-names:{seed}").shuffle(names)
    return [(index, names[index]) for index in range(start, start + count)]
