"""API models through LiteLLM against a local server that fails a share of its calls: retried, recorded, never cached.

Evaluations run on one thread so that the seeded fault draws, and therefore the outcomes, are the same every run.
"""

import json
import logging

import dspy
import pytest

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.evals import LLMJudge, evaluate
from restpg_dspy.optimizers import RESTPG
from restpg_dspy.programs import PersonalizedWriter, RAGWriter
from restpg_dspy.retrieval import BM25
from tests.openai_server import FaultyOpenAI

SENTINEL = "sk-test-SENTINEL-5f0c2e9a"
FAULTS = {"429": 0.2, "500": 0.05, "timeout": 0.05, "malformed": 0.08}


def answer(messages):
    """The judge grades 7; everyone else writes a short note."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return "7" if "You grade personalized writing" in system else "A short, warm note about the request."


def api_lm(server, name):
    return restpg_dspy.lm(
        f"openai/{name}", api_base=server.base_url, api_key=SENTINEL, num_retries=2, timeout=0.5, cache=False
    )


def files_holding(root, secret):
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_api_student_and_judge_under_faults_are_retried_recorded_and_never_cached(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    testset = synthetic("test", seed=0, users=6, requests_per_user=2)
    with FaultyOpenAI(answer, FAULTS, seed=3) as server:
        program = RAGWriter(retriever=BM25(k=2))
        program.set_lm(api_lm(server, "student"))
        judge = LLMJudge(api_lm(server, "judge"))
        first = evaluate(program, testset, [judge], cache_dir=tmp_path / "cache", num_threads=1, progress=False)
        calls = sum(server.outcomes.values())
        retried = calls - server.outcomes["ok"] - first.failed  # faults that a retry then got past
        summary = first.summary()["llm_judge"]
        assert server.outcomes["429"] and server.outcomes["500"] and server.outcomes["timeout"]
        assert retried > 0 and first.failed > 0
        assert summary["errors"] == first.failed and summary["n"] == len(testset) - first.failed
        assert sum(summary["error_kinds"].values()) == first.failed
        assert all(kind.startswith("LM") for kind in summary["error_kinds"])
        print(
            f"\ncalls {calls}: {dict(server.outcomes)}; retried past a fault {retried}; "
            f"recorded as failed {first.failed} ({summary['error_kinds']})"
        )

        server.faults = {}
        before = server.outcomes["ok"]
        second = evaluate(program, testset, [judge], cache_dir=tmp_path / "cache", num_threads=1, progress=False)
        failed_programs = sum(1 for r in first.rows if "program" in r["errors"])
        assert second.failed == 0 and second.summary()["llm_judge"]["n"] == len(testset)
        # Only what failed was asked again: each failed prediction (and then its score), each failed score.
        assert server.outcomes["ok"] - before == failed_programs * 2 + (first.failed - failed_programs)
        assert second.cached_predictions == len(testset) - failed_programs
        program.save(str(tmp_path / "program.json"))

    assert server.authorizations == {f"Bearer {SENTINEL}"}  # the key was sent...
    (tmp_path / "log.txt").write_text(caplog.text + json.dumps(first.rows) + json.dumps(second.rows))
    assert files_holding(tmp_path, SENTINEL) == []  # ...and written nowhere


def test_an_api_teacher_under_faults_is_retried_and_its_failures_retried_by_the_next_run(tiny_lm, tmp_path):
    trainset = synthetic("train", seed=0, users=6, requests_per_user=1)
    writer = PersonalizedWriter(retriever=BM25(k=2))
    writer.set_lm(tiny_lm.copy(max_tokens=8))
    with FaultyOpenAI(answer, {"429": 0.3, "malformed": 0.3}, seed=1) as server:
        teacher = api_lm(server, "teacher")
        settings = {"rounds": 0, "teacher_retries": 0, "num_threads": 1, "verbose": False}
        optimizer = RESTPG(run_dir=str(tmp_path / "run"), sft=False, **settings)
        optimizer.compile(writer, trainset=trainset, teacher=teacher)
        rows = [json.loads(line) for line in (tmp_path / "run/teacher_reasoning.jsonl").read_text().splitlines()]
        failed = [row for row in rows if "error" in row]
        assert server.outcomes["429"] and failed and len(rows) == len(trainset)
        assert all("LMProviderError" in row["error"] or "LMRateLimitError" in row["error"] for row in failed)
        server.faults = {}
        optimizer.compile(writer, trainset=trainset, teacher=teacher)
    latest = {}
    for line in (tmp_path / "run/teacher_reasoning.jsonl").read_text().splitlines():
        latest[json.loads(line)["id"]] = json.loads(line)
    assert all("reasoning" in row for row in latest.values()) and len(latest) == len(trainset)
    assert files_holding(tmp_path, SENTINEL) == []


@pytest.fixture(autouse=True)
def no_default_lm():
    with dspy.context(lm=None):
        yield
