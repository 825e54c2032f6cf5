"""``implicit_choice_v2``: the ``implicit_choice`` task with enough held-out evidence to decide, balanced by design.

Version 1 (:mod:`restpg_dspy.data.implicit_choice`, unchanged) held out two evidence sentences per fact, so a
held-out comparison rested on six sentences, and one of them served a single test user while the dog fact made up 40%
of held-out examples. Version 2 keeps the users, styles, requests, options, outputs and reference policies of
version 1 and changes what decides a comparison:

* **Evidence sentences**: each fact has 12, four *seen* (version 1's four, in every split) and eight *held-out*
  ones, which appear only in the test split. No evidence sentence shares a content word with any request or option.
* **Balance by construction**: users take their (fact, sentence) slots in turn from a seeded order that interleaves
  the facts, so every fact, and every sentence of a split, serves about equally many users. In the test split three
  users of every four have a held-out sentence: with the default 96 test users, each of the 24 held-out sentences
  serves 3 users (9 examples) and each seen sentence 2 users (6 examples).
* **Option positions**: a user's three requests put the right option first, second and third once each, so always
  answering the first (or any fixed position) scores chance; the wrong options' order is random.
* Examples also carry ``evidence``: the evidence sentence as the profile post shows it.

Default split sizes: 48 training users (each seen sentence 4 users), 24 validation users (2 each), 96 test users.
Users never repeat across splits; the same seed always gives the same data.

Example:
    >>> from restpg_dspy.data import synthetic
    >>> test = synthetic("test", seed=0, task="implicit_choice_v2")
    >>> len(test), sum(e.wording == "held_out" for e in test)
    (288, 216)
    >>> example = test[0]
    >>> sum(example.evidence in item["text"] for item in example.profile)
    1
"""

from __future__ import annotations

import random

import dspy

from restpg_dspy.data import implicit_choice as v1
from restpg_dspy.data.implicit_choice import FAMILIES, OPTIONS_PER_REQUEST, ChoiceUser, choice_example, user_profile
from restpg_dspy.data.personas import Style, split_names
from restpg_dspy.errors import UsageError

SPLIT_USERS = {"train": 48, "val": 24, "test": 96}
# Version 2 has more test users than version 1's name slices allow; its own slices keep the splits disjoint.
NAME_SLICES = {"train": (0, 96), "val": (96, 144), "test": (144, 240)}
SEEN_WORDINGS = 4  # the first four sentences of each fact (version 1's) appear in every split; the rest only in test
HELD_OUT_SHARE = 3  # in the test split, three users of every four have a held-out sentence

HELD_OUT_EVIDENCE: dict[str, list[str]] = {
    "vegetarian": [
        "Ordered the mushroom risotto again and skipped the pork special.",
        "The butcher down the road has not seen me in eight years.",
        "Swapped the turkey at the holiday feast for a stuffed squash.",
        "My burrito came with beans and rice, hold the chicken, as always.",
        "Read every label at the store to make sure no gelatin sneaks in.",
        "Tempeh stir-fry tonight; I have not missed bacon once since college.",
        "The sushi chef made me cucumber and avocado rolls instead of tuna.",
        "Politely declined the sausages at the stadium and munched on pretzels.",
    ],
    "cold": [
        "The thermometer read minus thirty when I left for work.",
        "Wore two scarves, mittens and a wool hat to wait for the bus.",
        "Our pipes froze overnight, so no running water until noon.",
        "Icicles as long as my arm hang from the gutter until April.",
        "Plugged in the engine block warmer before the blizzard hit.",
        "The polar night means we barely see the sun until February.",
        "Frostbite nearly got my toes while waiting for the tram.",
        "Spent the morning chipping ice off the front steps with a hammer.",
    ],
    "dog": [
        "My retriever chewed through another tennis ball this morning.",
        "The vet says my terrier needs fewer biscuits and more exercise.",
        "Found muddy paw prints all over the freshly mopped hallway.",
        "Spent the afternoon at the groomer; my poodle now looks like a cloud.",
        "Taught my puppy to sit and shake paws in one week.",
        "My husky howls every time the neighbours play the trumpet.",
        "Threw the frisbee at the beach until my collie was exhausted.",
        "Bought a bigger crate now that my labrador has doubled in size.",
    ],
}

# fact -> (aspect, evidence sentences: the seen ones first, reason clause): version 1's facts with more evidence.
FACTS: dict[str, dict] = {
    fact: {**spec, "evidence": [*spec["evidence"], *HELD_OUT_EVIDENCE[fact]]} for fact, spec in v1.FACTS.items()
}


def _slots(seed: int, split: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The split's seen and held-out ``(fact, sentence index)`` slots, each list in a seeded order whose every run of
    three holds one slot of each fact, so any prefix is balanced across facts."""
    rng = random.Random(f"restpg-implicit-choice-v2-slots:{seed}:{split}")
    facts = sorted(FACTS)

    def interleaved(indices: range) -> list[tuple[str, int]]:
        per_fact = {fact: rng.sample(list(indices), k=len(indices)) for fact in facts}
        order = []
        for turn in range(len(indices)):
            row = [(fact, per_fact[fact][turn]) for fact in facts]
            rng.shuffle(row)
            order += row
        return order

    return interleaved(range(SEEN_WORDINGS)), interleaved(range(SEEN_WORDINGS, len(FACTS[facts[0]]["evidence"])))


def _users(seed: int, split: str, count: int) -> list[ChoiceUser]:
    seen, held_out = _slots(seed, split)
    taken = {"seen": 0, "held_out": 0}
    users = []
    for index, name in split_names(seed, split, count, slices=NAME_SLICES):
        rng = random.Random(f"restpg-implicit-choice-v2-user:{seed}:{index}")
        style = Style.draw(name, rng)
        kind = "held_out" if split == "test" and index % (HELD_OUT_SHARE + 1) != HELD_OUT_SHARE else "seen"
        order = held_out if kind == "held_out" else seen
        fact, wording = order[taken[kind] % len(order)]
        taken[kind] += 1
        users.append(
            ChoiceUser(f"v2c{seed}-{index:03d}", name, style.greeting, style.sign_off, style.phrase, fact, wording)
        )
    return users


def implicit_choice_v2(
    split: str = "train",
    seed: int = 0,
    *,
    users: int | None = None,
    requests_per_user: int = 3,
) -> list[dspy.Example]:
    """Generate one split of the ``implicit_choice_v2`` task (see the module docs).

    Args:
        split: ``train``, ``val`` or ``test``; users never repeat across splits of one seed.
        seed: The same seed always yields the same users, profiles, requests and outputs.
        users: Users in this split (default: 48 train, 24 val, 96 test).
        requests_per_user: Examples per user, at most 3 (one per request kind); a user's examples share a profile.

    Returns:
        Examples with inputs ``request`` and ``profile`` and the fields ``output``, ``id``, ``user_id``,
        ``options``, ``answer``, ``aspect``, ``fact``, ``wording``, ``evidence``, ``family`` and ``traits``.
    """
    if not 1 <= requests_per_user <= len(FAMILIES):
        raise UsageError(f"requests_per_user must be between 1 and {len(FAMILIES)}, not {requests_per_user}")
    families = sorted(FAMILIES)
    examples = []
    for number_of_user, user in enumerate(_users(seed, split, SPLIT_USERS[split] if users is None else users)):
        rng = random.Random(f"restpg-implicit-choice-v2-examples:{seed}:{user.user_id}")
        evidence = FACTS[user.fact]["evidence"][user.wording]
        profile = user_profile(user, evidence, rng)
        start = rng.randrange(len(families))
        wording = "seen" if user.wording < SEEN_WORDINGS else "held_out"
        for number in range(requests_per_user):
            others = [fact for fact in sorted(FACTS) if fact != user.fact]
            rng.shuffle(others)
            # The right option's position turns with the request, so positions are balanced by construction.
            position = (number_of_user + number) % OPTIONS_PER_REQUEST
            facts = [*others[:position], user.fact, *others[position:]]
            family = families[(start + number) % len(families)]
            examples.append(choice_example(user, number, family, facts, profile, wording=wording, evidence=evidence))
    return examples
