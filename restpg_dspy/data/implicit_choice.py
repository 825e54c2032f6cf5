"""The ``implicit_choice`` synthetic task: the right answer follows only from reasoning about the user.

Design:

* **Users** have a writing style (greeting, favourite phrase, sign-off with their first name) and **one life fact**:
  vegetarian, lives somewhere very cold, or owns a dog.
* **Profiles** hold four posts, all in the user's style: one *evidence* post that implies the fact, and three
  distractors about hobbies. The profile is small enough that a program shows all of it, so the evidence is always
  in the prompt.
* **Evidence wordings**: each fact has four; two appear in every split, two only in the test split (the
  *held-out* wordings, ``example.wording == "held_out"``; half of the test users have one). No evidence wording, and
  no distractor, shares a content word with any request or option, so matching words cannot find the answer.
* **Requests** ask the user to pick one of three options (shuffled), each serving a different need: meat-free food,
  warmth or pets. Three request kinds: a restaurant, a getaway, a home to rent.
* **Expected output**: the user's greeting, an opening, the option that serves their fact copied from the request,
  a short clause giving the reason, their phrase and their sign-off.

Examples carry ``options`` (as listed in the request), ``answer`` (the right option), ``aspect`` (the need it
serves), ``fact``, ``wording`` (``"seen"`` or ``"held_out"``), ``family`` and ``traits``. The same seed always
gives the same data; users never repeat across splits.

Example:
    >>> from restpg_dspy.data import synthetic
    >>> example = synthetic("test", seed=0, users=1, requests_per_user=1)[0]
    >>> example.answer in example.options and example.answer in example.request and example.answer in example.output
    True
    >>> len(example.profile), example.wording
    (4, 'seen')
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import dspy

from restpg_dspy.data.personas import Style, sentence, split_names
from restpg_dspy.errors import UsageError

SPLIT_USERS = {"train": 48, "val": 16, "test": 80}
SEEN_WORDINGS = 2  # the first two wordings of each fact appear in every split; the rest only in the test split
OPTIONS_PER_REQUEST = 3

# fact -> (the need it makes matter, the evidence wordings, the reason clause of the answer). Calibrated on plain SFT's
# accuracy on seen wordings: with five facts and four seen wordings each, SFT (3 epochs, 144 examples) chose at chance.
FACTS: dict[str, dict] = {
    "vegetarian": {
        "aspect": "meat-free food",
        "evidence": [
            "Tofu, lentils and chickpeas fill my shopping cart.",
            "A decade since I last ate a steak or a burger, and no regrets.",
            "My grandmother finally stopped offering me her chicken soup.",
            "At the barbecue I stuck to grilled halloumi and corn, like every summer.",
        ],
        "reason": "since I do not eat meat",
    },
    "cold": {
        "aspect": "warmth",
        "evidence": [
            "Another minus twenty sunrise up here near the Arctic Circle.",
            "Shovelled snow off the porch for the third time in seven days.",
            "The lake outside our village froze solid again in October.",
            "Scraped ice off the windshield before dawn, as every day since autumn.",
        ],
        "reason": "since staying warm matters where I live",
    },
    "dog": {
        "aspect": "pets",
        "evidence": [
            "Took my beagle for a long walk by the river.",
            "Bought a new leash and a bag of treats at the shop.",
            "Brushed a mountain of fur off the sofa after his nap.",
            "Woken at six by barking at the mail carrier again.",
        ],
        "reason": "since my dog comes everywhere with me",
    },
}

# Request kinds: the question, the answer's opening, and the option that serves each fact's need.
FAMILIES: dict[str, dict] = {
    "restaurant": {
        "question": "Which place should we choose for dinner on Saturday?",
        "opening": "For Saturday I would choose",
        "options": {
            "vegetarian": "the bistro with a fully meat-free menu",
            "cold": "the tavern with a roaring fireplace and heated seats",
            "dog": "the patio café where pets are welcome",
        },
    },
    "getaway": {
        "question": "Which getaway should I pick for a short break?",
        "opening": "For my short break I would pick",
        "options": {
            "vegetarian": "the farm retreat with a vegetarian kitchen",
            "cold": "the heated cabin with thick blankets and a sauna",
            "dog": "the lodge with pet beds and open fields",
        },
    },
    "home": {
        "question": "Which home should I rent?",
        "opening": "Of the homes I saw, I would rent",
        "options": {
            "vegetarian": "the studio beside a meat-free grocer",
            "cold": "the apartment with heated floors and triple glazing",
            "dog": "the maisonette that allows pets and has a park nearby",
        },
    },
}

DISTRACTORS = [
    "Finally finished the mystery novel everyone talks about; the ending surprised me.",
    "Repotted all my succulents and the balcony looks brand new.",
    "Watched an old black-and-white film and loved the score.",
    "Work has been hectic, but the new project is coming together.",
    "Tried a pottery class and made a very lopsided bowl.",
    "Learned three new chords on the guitar.",
    "Spent the evening sorting old photos into albums.",
    "Our book club argued about poetry for two hours.",
    "Started learning Italian with an app; my accent is terrible.",
    "Ran my first five-kilometre race and finished smiling.",
]
POST_CLOSING = "that is life."


@dataclass(frozen=True)
class ChoiceUser:
    """The latent traits behind one ``implicit_choice`` user."""

    user_id: str
    name: str
    greeting: str
    sign_off: str
    phrase: str
    fact: str
    wording: int  # index into FACTS[fact]["evidence"]


def request_text(family: str, options: list[str]) -> str:
    """The request listing ``options`` in order."""
    listed = "; ".join(f"({number}) {option}" for number, option in enumerate(options, start=1))
    return f"{FAMILIES[family]['question']} The options: {listed}. Write my recommendation."


def expected_output(user: ChoiceUser, family: str) -> str:
    """What ``user`` writes for a request of ``family`` (the task's ground truth)."""
    option = FAMILIES[family]["options"][user.fact]
    return " ".join(
        [
            user.greeting,
            f"{FAMILIES[family]['opening']} {option}, {FACTS[user.fact]['reason']}.",
            sentence(user.phrase, "it is the right choice."),
            user.sign_off,
        ]
    )


def post(style: ChoiceUser | Style, body: str) -> str:
    """A profile post in the user's style."""
    return " ".join([style.greeting, body, sentence(style.phrase, POST_CLOSING), style.sign_off])


def _users(seed: int, split: str, count: int) -> list[ChoiceUser]:
    users = []
    for index, name in split_names(seed, split, count):
        rng = random.Random(f"restpg-implicit-choice-user:{seed}:{index}")
        style = Style.draw(name, rng)
        fact = rng.choice(sorted(FACTS))
        # Test users alternate between seen and held-out wordings, so both halves are equally large.
        held_out = split == "test" and index % 2 == 1
        wordings = len(FACTS[fact]["evidence"])
        wording = rng.randrange(SEEN_WORDINGS, wordings) if held_out else rng.randrange(SEEN_WORDINGS)
        users.append(
            ChoiceUser(f"c{seed}-{index:03d}", name, style.greeting, style.sign_off, style.phrase, fact, wording)
        )
    return users


def implicit_choice(
    split: str = "train",
    seed: int = 0,
    *,
    users: int | None = None,
    requests_per_user: int = 3,
) -> list[dspy.Example]:
    """Generate one split of the ``implicit_choice`` task.

    Args:
        split: ``train``, ``val`` or ``test``; users never repeat across splits of one seed.
        seed: The same seed always yields the same users, profiles, requests and outputs.
        users: Users in this split (default: 48 train, 16 val, 80 test).
        requests_per_user: Examples per user, at most 3 (one per request kind); a user's examples share a profile.

    Returns:
        Examples with inputs ``request`` and ``profile`` and the fields ``output``, ``id``, ``user_id``,
        ``options``, ``answer``, ``aspect``, ``fact``, ``wording``, ``family`` and ``traits``.
    """
    if not 1 <= requests_per_user <= len(FAMILIES):
        raise UsageError(f"requests_per_user must be between 1 and {len(FAMILIES)}, not {requests_per_user}")
    examples = []
    for user in _users(seed, split, SPLIT_USERS[split] if users is None else users):
        rng = random.Random(f"restpg-implicit-choice-examples:{seed}:{user.user_id}")
        profile = user_profile(user, FACTS[user.fact]["evidence"][user.wording], rng)
        for number, family in enumerate(rng.sample(sorted(FAMILIES), k=requests_per_user)):
            others = rng.sample([fact for fact in sorted(FACTS) if fact != user.fact], k=OPTIONS_PER_REQUEST - 1)
            facts = [user.fact, *others]
            rng.shuffle(facts)
            wording = "seen" if user.wording < SEEN_WORDINGS else "held_out"
            examples.append(choice_example(user, number, family, facts, profile, wording=wording))
    return examples


def user_profile(user: ChoiceUser, evidence: str, rng: random.Random) -> list[dict[str, str]]:
    """The user's four dated posts: the ``evidence`` post and three distractors, in an order drawn from ``rng``."""
    bodies = [evidence, *rng.sample(DISTRACTORS, k=3)]
    rng.shuffle(bodies)
    return [{"date": f"2024-{1 + day:02d}-{7 + day * 5:02d}", "text": post(user, b)} for day, b in enumerate(bodies)]


def choice_example(
    user: ChoiceUser, number: int, family: str, facts: list[str], profile: list[dict], **fields: Any
) -> dspy.Example:
    """The user's ``number``-th request, of ``family``, offering the options that serve ``facts`` in that order."""
    options = [FAMILIES[family]["options"][fact] for fact in facts]
    return dspy.Example(
        id=f"{user.user_id}-{number}",
        user_id=user.user_id,
        request=request_text(family, options),
        profile=profile,
        output=expected_output(user, family),
        options=options,
        answer=FAMILIES[family]["options"][user.fact],
        aspect=FACTS[user.fact]["aspect"],
        fact=user.fact,
        **fields,
        family=family,
        traits=asdict(user),
    ).with_inputs("request", "profile")


POLICIES = ("template", "style", "lexical", "all_options", "right_option", "oracle")


def policy_response(example: dspy.Example, policy: str) -> dspy.Prediction:
    """The response of a reference policy that needs no LM, to calibrate scores on this task.

    Policies: ``template`` (the fixed opening and the first listed option, nothing from the profile), ``style`` (the
    user's greeting, phrase and sign-off around the first listed option), ``lexical`` (style, and the option sharing
    most words with the profile), ``all_options`` (style, listing every option), ``right_option`` (style and the right
    option, without the reason clause) and ``oracle`` (the expected output).

    Raises:
        UsageError: an unknown policy (the known ones are listed).
    """
    from restpg_dspy.evals.choice import content_words

    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")
    if policy == "oracle":
        return dspy.Prediction(response=example.output)
    opening = FAMILIES[example.family]["opening"]
    option = example.options[0]
    if policy == "template":
        return dspy.Prediction(response=f"{opening} {option}. It is the right choice.")
    if policy == "lexical":
        profile = set().union(*(content_words(item["text"]) for item in example.profile))
        option = max(example.options, key=lambda o: len(content_words(o) & profile))
    elif policy == "all_options":
        option = ", or ".join(example.options)
    elif policy == "right_option":
        option = example.answer
    traits = example.traits
    body = f"{opening} {option}. {sentence(traits['phrase'], 'it is the right choice.')}"
    return dspy.Prediction(response=f"{traits['greeting']} {body} {traits['sign_off']}")
