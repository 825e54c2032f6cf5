"""`restpg compile` and `restpg evaluate`, killed with SIGKILL at chosen points, resume to an uninterrupted state.

Each run is a subprocess with its own DSPy cache; the test watches the run directory and kills the process when it
reaches a point (during teacher reasoning, during sampling, during an M-step, right after an M-step, during
evaluation), runs the same command again, and compares everything with a run that was never interrupted: the teacher's
notes, the samples (ids, seeds, rewards), the adapters' content hashes, the kept traces, the saved program's model ids,
the evaluation's predictions and scores; no line is duplicated and no staging folder is left behind.
``pytest tests/test_kill.py -s`` prints the table: kill point x (lost, duplicated, recomputed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from restpg_dspy.optimizers.run_dir import read_jsonl

pytestmark = pytest.mark.slow


def prediction_count(cache: Path) -> int:
    if not (cache / "cache.db").exists():
        return 0
    import diskcache

    with diskcache.Cache(str(cache)) as store:
        return sum(1 for key in store.iterkeys() if str(key).startswith("prediction:"))


def command(config: Path, run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "restpg_dspy.cli", *args, "--config", str(config), "--run-dir", str(run_dir)]


def run(argv: list[str], cache: Path, kill_when=None) -> bool:
    """Run ``argv``; with ``kill_when(…) -> bool``, SIGKILL it as soon as that holds. Returns whether it was killed."""
    env = {**os.environ, "DSPY_CACHEDIR": str(cache), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_when is None:
        output = process.communicate()[0]
        assert process.returncode == 0, output[-3000:]
        return False
    while process.poll() is None:
        if kill_when():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    raise AssertionError(f"{argv} finished before its kill point:\n{process.stdout.read()[-3000:]}")


def compile_state(run_dir: Path) -> dict:
    samples = read_jsonl(run_dir / "round_1/samples.jsonl")
    notes = read_jsonl(run_dir / "teacher_reasoning.jsonl")
    program = json.loads((run_dir / "program.json").read_text())
    return {
        "notes": {row["id"]: row.get("reasoning") for row in notes},
        "samples": {(row["id"], row["index"]): (row["seed"], row["reward"], row["trace"]) for row in samples},
        "models": [json.loads((run_dir / f"{stage}/model.json").read_text())["model"] for stage in ("sft", "round_1")],
        "kept": read_jsonl(run_dir / "round_1/kept.jsonl"),
        "program_models": sorted(set(_values(program, "model"))),
    }


def complete_json(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def duplicated(run_dir: Path) -> int:
    notes = Counter(row["id"] for row in read_jsonl(run_dir / "teacher_reasoning.jsonl"))
    samples = Counter((row["id"], row["index"]) for row in read_jsonl(run_dir / "round_1/samples.jsonl"))
    return sum(n - 1 for n in notes.values()) + sum(n - 1 for n in samples.values())


def _values(tree, key: str):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key and isinstance(v, str):
                yield v
            yield from _values(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values(item, key)


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "config.yaml"
    path.write_text(
        f"student: local:{tiny_model_dir}\nsynthetic_train_users: 4\nsynthetic_test_users: 4\nmax_tokens: 12\n"
        "metrics: [rouge_l]\nnum_threads: 4\noptimizer: {rounds: 1, samples_per_input: 2, verbose: false}\n"
        "train_kwargs: {max_steps: 6, save_steps: 2}\n"
    )
    return path


KILL_POINTS = {
    "teacher reasoning": lambda d: len(read_jsonl(d / "teacher_reasoning.jsonl")) >= 3,
    "SFT M-step (training)": lambda d: (
        any((d / "adapters").glob(".training-*")) and not (d / "sft/model.json").exists()
    ),
    "SFT M-step (after a checkpoint)": lambda d: any(
        complete_json(state) for state in (d / "adapters").glob(".checkpoints-*/checkpoint-*/trainer_state.json")
    ),
    "right after SFT M-step": lambda d: (d / "sft/model.json").exists(),
    "round 1 sampling": lambda d: len(read_jsonl(d / "round_1/samples.jsonl")) >= 3,
    "round 1 M-step (training)": lambda d: (
        (d / "round_1/rows.jsonl").exists() and any((d / "adapters").glob(".training-*"))
    ),
    "right after round 1 M-step": lambda d: (d / "round_1/model.json").exists(),
}


def test_killed_compiles_and_evaluations_resume_to_the_uninterrupted_state(config, tmp_path):
    compile_args = ("compile", "--method", "rest-pg", "--data", "synthetic")
    reference_dir = tmp_path / "reference"
    run(command(config, reference_dir, *compile_args), tmp_path / "reference-cache")
    reference = compile_state(reference_dir)
    table = []
    for point, reached in KILL_POINTS.items():
        run_dir, cache = tmp_path / point.replace(" ", "_"), tmp_path / f"{point.replace(' ', '_')}-cache"
        assert run(command(config, run_dir, *compile_args), cache, lambda d=run_dir, r=reached: r(d))
        at_kill = len(read_jsonl(run_dir / "teacher_reasoning.jsonl")) + len(
            read_jsonl(run_dir / "round_1/samples.jsonl")
        )
        trained = sum((run_dir / f"{stage}/model.json").exists() for stage in ("sft", "round_1"))
        run(command(config, run_dir, *compile_args), cache)
        state = compile_state(run_dir)
        lost = sum(reference[k] != state[k] for k in ("notes", "samples", "models", "kept", "program_models"))
        rows_after = len(state["notes"]) + len(state["samples"])
        table.append((point, lost, duplicated(run_dir), f"{rows_after - at_kill} rows, {2 - trained} M-steps"))
        assert state == reference, f"killed at {point}: the resumed run differs from the uninterrupted one"
        leftovers = [*(run_dir / "adapters").glob(".training-*"), *(run_dir / "adapters").glob(".checkpoints-*")]
        assert duplicated(run_dir) == 0 and not leftovers
        if point == "SFT M-step (after a checkpoint)":
            sft_adapter = json.loads((run_dir / "sft/model.json").read_text())["adapter"]
            assert json.loads((Path(sft_adapter) / "training_log.json").read_text())["resumed_at_step"] >= 2

    evaluate_args = ("evaluate", "--program", str(reference_dir / "program.json"), "--data", "synthetic")
    eval_reference = tmp_path / "eval-reference"
    run(command(config, eval_reference, *evaluate_args), tmp_path / "eval-reference-cache")
    killed = tmp_path / "eval-killed"
    assert run(
        command(config, killed, *evaluate_args),
        tmp_path / "eval-cache",
        lambda: prediction_count(killed / "cache") >= 3,
    )
    cached_at_kill = prediction_count(killed / "cache")
    run(command(config, killed, *evaluate_args), tmp_path / "eval-cache")
    expected, resumed = read_jsonl(eval_reference / "evaluation.jsonl"), read_jsonl(killed / "evaluation.jsonl")
    table.append(
        (
            "evaluation",
            int(expected != resumed),
            len(resumed) - len({r["id"] for r in resumed}),
            f"{len(resumed) - cached_at_kill} predictions",
        )
    )
    assert resumed == expected

    print("\n| kill point | lost | duplicated | recomputed after the kill |\n|---|---|---|---|")
    for point, lost, dup, recomputed in table:
        print(f"| {point} | {lost} | {dup} | {recomputed} |")
