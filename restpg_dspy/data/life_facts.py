"""The ``life_facts`` synthetic task: life facts stated in past posts, and style, shape what a user writes.

The first synthetic family of the project, kept for comparison; :mod:`restpg_dspy.data.implicit_choice` is the
task where reasoning about the user decides the answer.

Design:

* **Users** have latent traits. *Writing habits*: a greeting, a sign-off with their first name, a favourite phrase
  and a preferred length (short or long). *Life facts* (one or two of: young kids, vegetarian, lives somewhere
  cold, owns a dog, on a tight budget).
* **Profiles** are the user's earlier posts, each opening with their greeting and closing with their favourite
  phrase and sign-off, so any retrieved post reveals the style. A few posts state a life fact in words that share
  nothing with future requests ("Two little ones turned the living room into a fort again"); the rest are
  distractors (hobbies, past reviews, trips, meals), several of which share words with requests.
* **Requests** come from three families: review a product, recommend a dish, write about a trip.
* **Expected outputs** follow the traits: greeting, an opening, a longer body for long writers, one sentence per
  life fact with *implicit relevance* (kids → safety, vegetarian → a meat-free dish, cold home → warmth, dog →
  pet-friendly, budget → price), the favourite phrase and the sign-off. A vegetarian is recommended a different
  dish, so the fact changes content, not just a sentence.

Consequences, both tested: (a) a writer that ignores the profile scores clearly below an oracle that knows the
traits; (b) similarity retrieval with a small k often misses the life-fact posts, because they share no words with
the request. Users are disjoint between splits; the same seed always gives the same data.

Example:
    >>> from restpg_dspy.data import synthetic
    >>> train = synthetic("train", seed=0, task="life_facts")
    >>> train[0].request  # doctest: +SKIP
    'Write a short review of the space heater you bought.'
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import dspy

from restpg_dspy.data.personas import Style, sentence, split_names

SPLIT_USERS = {"train": 24, "val": 8, "test": 16}

# Life facts: how a profile post states them (no overlap with request words), and what they change in each family.
FACTS = {
    "kids": {
        "evidence": [
            "My two little ones turned the living room into a fort again.",
            "School pickup, then swimming lessons for both of my children.",
        ],
        "review": "It feels safe to have around my kids.",
        "dish": "Even my kids asked for seconds.",
        "trip": "The kids loved every minute of it.",
    },
    "vegetarian": {
        "evidence": [
            "Ten years without eating meat and I have never felt better.",
            "Tofu, lentils and chickpeas fill my shopping cart every week.",
        ],
        "review": "It is great for preparing my meat-free meals.",
        "dish": "It is completely meat-free, of course.",
        "trip": "I found plenty of vegetarian food there.",
    },
    "cold": {
        "evidence": [
            "Another minus twenty morning up here near the Arctic Circle.",
            "Shovelled snow off the porch for the third time this week.",
        ],
        "review": "It copes well with our freezing winters.",
        "dish": "It is a warming dish, perfect for our frozen evenings.",
        "trip": "It felt wonderfully warm compared to home.",
    },
    "dog": {
        "evidence": [
            "Took Biscuit, my beagle, for a long walk by the river.",
            "Biscuit chewed through another squeaky toy today.",
        ],
        "review": "My dog Biscuit does not mind it at all.",
        "dish": "Biscuit begged for a bite, as always.",
        "trip": "Biscuit came along and loved it.",
    },
    "budget": {
        "evidence": [
            "Saving every penny this year, so I compare prices on everything.",
            "Clipped coupons all afternoon; every cent counts right now.",
        ],
        "review": "The price was fair, which matters a lot to me.",
        "dish": "It is cheap to make, too.",
        "trip": "We kept it cheap and still had a great time.",
    },
}

PRODUCTS = [
    "space heater",
    "blender",
    "hiking backpack",
    "camping tent",
    "desk lamp",
    "coffee maker",
    "rice cooker",
    "electric kettle",
    "air purifier",
    "bike helmet",
]
DISHES = {
    "meat": ["roast chicken with garlic potatoes", "beef stew with crusty bread", "pork tacos with salsa"],
    "vegetarian": ["mushroom risotto", "vegetable lasagna", "chickpea curry with rice"],
}
OCCASIONS = ["a family dinner", "a rainy Sunday", "a birthday party", "a weeknight meal", "a potluck with friends"]
PLACES = ["the coast", "the mountains", "a lake cabin", "the old town", "a national park", "the countryside"]
DISTRACTORS = [
    "Finally finished the mystery novel everyone talks about; the ending surprised me.",
    "Repotted all my succulents and the balcony looks brand new.",
    "Watched an old black-and-white film last night and loved the score.",
    "Work has been hectic, but the new project is coming together.",
    "Tried a pottery class and made a very lopsided bowl.",
    "Learned three new chords on the guitar this week.",
    "Spent the evening sorting old photos into albums.",
    "Our book club argued about poetry for two hours.",
]


@dataclass(frozen=True)
class UserTraits:
    """The latent traits behind one synthetic user's writing."""

    user_id: str
    name: str
    greeting: str
    sign_off: str
    phrase: str
    long_writer: bool
    facts: tuple[str, ...]


def _request(rng: random.Random) -> tuple[str, str, str]:
    family = rng.choice(["review", "dish", "trip"])
    if family == "review":
        subject = rng.choice(PRODUCTS)
        return family, subject, f"Write a short review of the {subject} you bought."
    if family == "dish":
        subject = rng.choice(OCCASIONS)
        return family, subject, f"Recommend a dish for {subject}."
    subject = rng.choice(PLACES)
    return family, subject, f"Write a short post about your weekend trip to {subject}."


def _sentences(user: UserTraits, family: str, subject: str, rng: random.Random) -> list[str]:
    if family == "review":
        body = [f"I bought the {subject} last month and it does the job well."]
        extra = "Setting it up took five minutes and it has worked every day since."
        closing = "I would buy it again."
    elif family == "dish":
        dish = rng.choice(DISHES["vegetarian" if "vegetarian" in user.facts else "meat"])
        body = [f"For {subject} I recommend {dish}."]
        extra = "It takes about an hour and most of that is waiting."
        closing = "it never fails."
    else:
        body = [f"We spent the weekend at {subject} and it was lovely."]
        extra = "The weather held up and the views were worth the drive."
        closing = "I want to go back soon."
    if user.long_writer:
        body.append(extra)
    return [*body, *(FACTS[fact][family] for fact in user.facts), sentence(user.phrase, closing)]


def expected_output(user: UserTraits, family: str, subject: str, rng: random.Random) -> str:
    """What ``user`` writes for a request of ``family`` about ``subject`` (the benchmark's ground truth)."""
    return " ".join([user.greeting, *_sentences(user, family, subject, rng), user.sign_off])


def _profile(user: UserTraits, size: int, rng: random.Random) -> list[dict[str, str]]:
    posts = [[rng.choice(FACTS[fact]["evidence"]), sentence(user.phrase, "that is life.")] for fact in user.facts]
    past_family, past_subject, _ = _request(rng)  # a past post of a request family: lexically close to requests
    posts.append(_sentences(user, past_family, past_subject, rng))
    distractors = rng.sample(DISTRACTORS, k=min(len(DISTRACTORS), max(0, size - len(posts))))
    posts += [[text, sentence(user.phrase, "that is life.")] for text in distractors]
    rng.shuffle(posts)
    return [
        {
            "date": f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}",
            "text": " ".join([user.greeting, *body, user.sign_off]),
        }
        for day, body in enumerate(posts[:size])
    ]


def _users(seed: int, split: str, count: int) -> list[UserTraits]:
    users = []
    for index, name in split_names(seed, split, count):
        rng = random.Random(f"restpg-synthetic-user:{seed}:{index}")
        style = Style.draw(name, rng)
        users.append(
            UserTraits(
                user_id=f"u{seed}-{index:03d}",
                name=name,
                greeting=style.greeting,
                sign_off=style.sign_off,
                phrase=style.phrase,
                long_writer=rng.random() < 0.5,
                facts=tuple(sorted(rng.sample(sorted(FACTS), k=rng.choice([1, 2])))),
            )
        )
    return users


def life_facts(
    split: str = "train",
    seed: int = 0,
    *,
    users: int | None = None,
    requests_per_user: int = 2,
    profile_size: int = 8,
) -> list[dspy.Example]:
    """Generate one split of the ``life_facts`` benchmark.

    Args:
        split: ``train``, ``val`` or ``test``; users never repeat across splits of one seed.
        seed: The same seed always yields the same users, profiles, requests and outputs.
        users: Users in this split (default: 24 train, 8 val, 16 test).
        requests_per_user: Examples per user (each user's examples share one profile).
        profile_size: Posts per profile.

    Returns:
        Examples with inputs ``request`` and ``profile``, and ``output``, ``id``, ``user_id``, ``family``
        (review/dish/trip) and ``traits`` (the latent traits, for analysis and oracles).
    """
    examples = []
    for user in _users(seed, split, SPLIT_USERS[split] if users is None else users):
        rng = random.Random(f"restpg-synthetic-examples:{seed}:{user.user_id}")
        profile = _profile(user, profile_size, rng)
        for number in range(requests_per_user):
            family, subject, request = _request(rng)
            examples.append(
                dspy.Example(
                    id=f"{user.user_id}-{number}",
                    user_id=user.user_id,
                    request=request,
                    profile=profile,
                    output=expected_output(user, family, subject, rng),
                    family=family,
                    traits=asdict(user),
                ).with_inputs("request", "profile")
            )
    return examples
