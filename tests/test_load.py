"""Load: many concurrent program calls through one local engine, mixing the base model and two LoRA adapters."""

import threading

import pytest

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.programs import RAGWriter
from restpg_dspy.retrieval import BM25
from tests.conftest import save_random_adapter

CALLS = 64


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Two LoRA adapters with random (non-zero) weights: each one changes what the model writes."""
    return [save_random_adapter(tiny_model_dir, tmp_path_factory.mktemp(f"adapter-{seed}"), seed) for seed in (1, 2)]


def test_concurrent_calls_mixing_base_and_adapters_equal_each_call_alone(tiny_model_dir, tiny_engine, adapters):
    base = restpg_dspy.lm(f"local:{tiny_model_dir}", batch_window_ms=50.0, default_max_tokens=16, cache=False)
    weights = [base] + [base.copy(model=tiny_engine.register_adapter(path)) for path in adapters]
    examples = synthetic("test", seed=0, users=8, requests_per_user=2)
    programs = []
    for call in range(CALLS):
        program = RAGWriter(retriever=BM25(k=2))
        seed = 1000 + call
        program.set_lm(weights[call % 3].copy(temperature=1.0, max_tokens=10, seed=seed, rollout_id=seed))
        programs.append((program, examples[call % len(examples)]))

    def run(index: int) -> str:
        program, example = programs[index]
        return program(**example.inputs().toDict()).response

    alone = [run(i) for i in range(CALLS)]
    before = dict(tiny_engine.stats)
    together: list[str | None] = [None] * CALLS
    start = threading.Barrier(CALLS)

    def concurrent(index: int) -> None:
        start.wait()
        together[index] = run(index)

    threads = [threading.Thread(target=concurrent, args=(i,)) for i in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tiny_engine.stats["batches"] - before["batches"] < CALLS  # the calls really shared batches
    mismatched = [i for i in range(CALLS) if together[i] != alone[i]]
    assert not mismatched, f"calls {mismatched} differ from the same call run alone"

    # The test can fail: the same request and seed on an adapter writes something else than on the base model.
    def on_adapter(index: int) -> str:
        program, example = programs[index]
        moved = program.deepcopy()
        moved.set_lm(weights[1].copy(temperature=1.0, max_tokens=10, seed=1000 + index, rollout_id=1000 + index))
        return moved(**example.inputs().toDict()).response

    on_base = range(0, CALLS, 3)
    assert sum(on_adapter(i) != alone[i] for i in on_base) > len(on_base) // 2
