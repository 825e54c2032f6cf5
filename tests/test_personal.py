"""Personal adapters: per-user training over a compiled program, routing by user_id, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dspy
import pytest

from restpg_dspy.errors import UsageError
from restpg_dspy.evals import evaluate
from restpg_dspy.evals.evaluate import program_fingerprint
from restpg_dspy.optimizers import PersonalAdapters
from restpg_dspy.optimizers.run_dir import read_jsonl
from restpg_dspy.programs import PersonalizedWriter, PersonalRouter
from restpg_dspy.retrieval import BM25

REQUEST = "Write a short post telling your friends what is new with you."


def user(name: str, posts: list[str], request: str = "Write my news.") -> dspy.Example:
    profile = [{"text": post, "date": f"2024-0{i + 1}-01"} for i, post in enumerate(posts)]
    return dspy.Example(id=f"{name}-0", user_id=name, request=request, profile=profile, output="-").with_inputs(
        "request", "profile", "user_id"
    )


USERS = [
    user("ann", ["Hi all, the lake was calm today. Ann", "Hi all, baked bread twice. Ann", "Hi all, new kayak! Ann"]),
    user("bob", ["Yo, gym at six again. Bob", "Yo, fixed the bike chain. Bob"]),
]


@pytest.fixture
def program(tiny_lm):
    writer = PersonalizedWriter(retriever=BM25(k=2), task="synthetic", reasoning_max_tokens=4, response_max_tokens=6)
    writer.set_lm(tiny_lm)
    return writer


def compile_users(program, tmp_path, users=USERS, **settings):
    settings = {"num_train_epochs": 2, "run_dir": str(tmp_path / "personal"), "verbose": False, **settings}
    return PersonalAdapters(**settings).compile(program, users=users)


def test_each_user_gets_an_adapter_trained_on_their_own_items_left_out_of_their_prompts(program, tmp_path):
    router = compile_users(program, tmp_path)
    assert router.users() == ["ann", "bob"] and router.routed == ("write",)
    log = {row["user_id"]: row for row in router.personal_adapters_log}
    assert (log["ann"]["items"], log["ann"]["rows"], log["bob"]["rows"]) == (3, 3, 2)
    assert log["ann"]["adapter"] != log["bob"]["adapter"] and log["ann"]["adapter_bytes"] > 0
    rows = read_jsonl(tmp_path / "personal/rows/ann.jsonl")
    for row, post in zip(rows, USERS[0].profile, strict=True):
        prompt, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        assert answer == post["text"] and post["text"] not in prompt  # its own item is never shown
        assert REQUEST in prompt and "Reasoning:" in prompt  # the generation step's prompt, with the shared notes
        assert row["messages"][0]["content"] == program.write.signature.instructions.strip()


def test_calls_are_routed_by_user_and_say_what_served_them(program, tmp_path):
    router = compile_users(program, tmp_path)
    inputs = {"request": "Write my news.", "profile": USERS[0].profile}
    ann, nobody, anonymous = router(**inputs, user_id="ann"), router(**inputs, user_id="eve"), router(**inputs)
    assert ann.personal and ann.served_by.startswith(program.write.lm.model.split("+")[0] + "+lora-")
    assert not nobody.personal and nobody.served_by == program.write.lm.model
    assert not anonymous.personal and anonymous.response == nobody.response == program(**inputs).response
    # The shared program's predictors keep the shared LM: routing works on copies.
    assert program.write.lm.model == router.program.write.lm.model == nobody.served_by


def test_the_routing_is_part_of_the_cache_identity_and_the_evaluation_records_it(program, tmp_path):
    router = compile_users(program, tmp_path)
    other = PersonalRouter(program, {"ann": router.adapters["bob"]}, routed=["write"])
    fingerprints = {program_fingerprint(p) for p in (program, router, other)}
    assert len(fingerprints) == 3
    settings = {"metrics": [lambda e, p, trace=None: 1.0], "cache_dir": tmp_path / "cache", "progress": False}
    result = evaluate(router, USERS, **settings)
    assert result.failed == 0 and [row["user_id"] for row in result.rows] == ["ann", "bob"]
    assert evaluate(router, USERS, **settings).cached_predictions == 2
    assert evaluate(program, [e.with_inputs("request", "profile") for e in USERS], **settings).cached_predictions == 0


def test_a_saved_router_loads_its_routing(program, tmp_path):
    router = compile_users(program, tmp_path)
    router.save(tmp_path / "router.json")
    loaded = PersonalRouter(PersonalizedWriter(retriever=BM25(k=2), task="synthetic"), {}, routed=["write"])
    loaded.load(tmp_path / "router.json", allow_unsafe_lm_state=True)
    assert loaded.adapters == router.adapters and loaded.routed == router.routed


def test_bad_users_and_settings_are_refused_with_the_reason(program, tmp_path):
    no_user = dspy.Example(id="x1", request="r", profile=[])
    with pytest.raises(UsageError, match=r"user example 0 \(x1\) has no 'user_id'"):
        compile_users(program, tmp_path, users=[no_user])
    bad_profile = dspy.Example(id="x2", user_id="u", request="r", profile="a string")
    with pytest.raises(UsageError, match=r"user example 0 \(x2\) has no 'profile' list"):
        compile_users(program, tmp_path, users=[bad_profile])
    with pytest.raises(UsageError, match="are not predictors"):
        PersonalRouter(program, {}, routed=["rewrite"])
    generic = PersonalizedWriter(retriever=BM25(k=2), reasoning_max_tokens=4, response_max_tokens=4)
    generic.set_lm(program.write.lm)
    odd = dspy.Example(id="x3", user_id="u", request="r", profile=[{"note": "hello"}])
    with pytest.raises(UsageError, match="does not say how a profile item becomes a request"):
        compile_users(generic, tmp_path / "generic", users=[odd])


KILLED_RUN = """
import sys, dspy, restpg_dspy
from restpg_dspy.optimizers import PersonalAdapters
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.retrieval import BM25
lm = restpg_dspy.lm("local:{model}", default_max_tokens=8, max_tokens=8)
writer = PersonalizedWriter(retriever=BM25(k=2), task="synthetic", reasoning_max_tokens=4, response_max_tokens=4)
writer.set_lm(lm)
posts = lambda i: [{{"text": f"Post {{j}} of user {{i}}.", "date": "2024"}} for j in range(3)]
users = [dspy.Example(user_id=f"user{{i}}", profile=posts(i)) for i in range(3)]
router = PersonalAdapters(num_train_epochs=40, run_dir=sys.argv[1], verbose=False).compile(writer, users=users)
print("trained", sorted(router.adapters))
"""


@pytest.mark.slow
def test_a_kill_during_the_user_loop_loses_no_user_and_trains_none_twice(tiny_model_dir, tmp_path):
    script = tmp_path / "personal.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(model=tiny_model_dir)))
    run_dir, log = tmp_path / "run", tmp_path / "run/users.jsonl"
    env = {**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")}
    process = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env, stderr=subprocess.DEVNULL)
    while process.poll() is None and len(read_jsonl(log)) < 1:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # in the second user's training, after the first was recorded
    process.wait()
    first = read_jsonl(log)
    assert [row["user_id"] for row in first] == ["user0"], "the kill missed the second user's training"
    finished = subprocess.run([sys.executable, str(script), str(run_dir)], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = read_jsonl(log)
    assert [row["user_id"] for row in rows] == ["user0", "user1", "user2"]  # none twice, none lost
    assert rows[0] == first[0]
    assert "trained ['user0', 'user1', 'user2']" in finished.stdout
    published = [p for p in (run_dir / "adapters").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(published) == 3 and all(Path(row["adapter"]).is_dir() for row in rows)


@pytest.mark.slow
def test_two_users_with_contradictory_histories_answer_one_prompt_differently_through_their_adapters(tmp_path):
    import restpg_dspy

    lm = restpg_dspy.lm("local", max_tokens=12)
    # No profile item is shown (k=0), in training or serving: what a user wrote can reach the answer only through
    # their adapter, and both users' prompts are identical.
    shared = PersonalizedWriter(retriever=BM25(k=0), task="synthetic", reasoning_max_tokens=8, response_max_tokens=12)
    shared.set_lm(lm)
    blue = [f"Blue is my colour: blue skies, blue sea {n}." for n in range(3)]
    red = [f"Red is my colour: red roses, red wine {n}." for n in range(3)]
    optimizer = PersonalAdapters(r=4, num_train_epochs=12, learning_rate=3e-3, run_dir=str(tmp_path), verbose=False)
    router = optimizer.compile(shared, users=[user("blue", blue), user("red", red)])
    inputs = {"request": REQUEST, "profile": user("blue", blue).profile}
    answers = {name: router(**inputs, user_id=name) for name in ("blue", "red")}
    assert answers["blue"].personal and answers["red"].personal
    prompts = [json.loads(line)["messages"][1]["content"] for line in (tmp_path / "rows/blue.jsonl").open()]
    assert all("no earlier writing" in prompt and "Blue" not in prompt for prompt in prompts)
    assert answers["blue"].response.startswith("Blue is my colour")
    assert answers["red"].response.startswith("Red is my colour")
    assert not router(**inputs).response.startswith(("Blue is my colour", "Red is my colour"))
