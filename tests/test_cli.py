import json
import logging

import pytest

import restpg_dspy
from restpg_dspy.cli import TruncationCounter, build_parser, main
from restpg_dspy.experiments.config import TableConfig
from restpg_dspy.experiments.table import load_task


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"student: local:{tiny_model_dir}\n"
        "synthetic_train_users: 2\nsynthetic_test_users: 2\nmax_tokens: 6\nmetrics: [rouge_l]\n"
        "optimizer: {rounds: 1, samples_per_input: 2, verbose: false}\ntrain_kwargs: {max_steps: 1}\n"
    )
    return path


def test_every_option_is_explained():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"restpg {name} {action.option_strings or action.dest} has no help text"


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("restpg: error:") and error.count("\n") == 1
    assert main(["table", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert main(["table", "--reasoning-max-tokens", "0", "--run-dir", str(tmp_path)]) == 2
    assert "reasoning_max_tokens must be a positive number of tokens, not 0" in capsys.readouterr().err
    assert main(["compile", "--synthetic-task", "riddles", "--run-dir", str(tmp_path)]) == 2
    assert "unknown synthetic_task 'riddles'; choose one of" in capsys.readouterr().err


def test_compile_then_evaluate_the_saved_program(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", str(tiny_config), "--run-dir", str(run), "--data", "synthetic"]
    assert main(["compile", "--method", "rest-em", *args]) == 0
    assert (run / "program.json").exists() and (run / "round_1" / "samples.jsonl").exists()
    assert main(["evaluate", "--program", str(run / "program.json"), *args]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "evaluation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(row["id"] and isinstance(row["rouge_l"], float) for row in rows)  # 2 users x 3
    # The printed mean is the mean of the per-example scores written beside it, and the program is the compiled one.
    mean = sum(row["rouge_l"] for row in rows) / len(rows)
    assert f"rouge_l                  {mean:.4f} [" in out and "n=6 errors=0" in out
    saved = json.loads((run / "program.json").read_text())
    assert "+lora-" in json.dumps(saved)
    assert main(["report", str(run)]) == 0 and (run / "rewards.png").stat().st_size > 0


def test_table_command_prints_the_table(tiny_config, tmp_path, capsys):
    run = tmp_path / "table"
    assert (
        main(["table", "--config", str(tiny_config), "--run-dir", str(run), "--methods", "no-personalization,rag"]) == 0
    )
    out = capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    for method in ("no-personalization", "rag"):
        stats = results[method]["synthetic"]["rouge_l"]
        assert stats["n"] == 6 and stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
        row = f"| {method} | {stats['mean']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}] |"
        assert row in out and row in (run / "table.md").read_text()
    # Each method's means on the seen and the held-out evidence wordings, beside the table.
    _, testset = load_task("synthetic", TableConfig.from_file(tiny_config))
    held_out = {e.id for e in testset if e.wording == "held_out"}
    assert held_out and len(held_out) < len(testset)
    rows = [json.loads(line) for line in (run / "synthetic" / "rag.predictions.jsonl").read_text().splitlines()]
    mean = sum(r["rouge_l"] for r in rows if r["id"] in held_out) / len(held_out)
    subsets = (run / "subsets.md").read_text()
    assert "| method | synthetic seen rouge_l | synthetic held_out rouge_l |" in subsets
    assert "| rag | " in subsets and f"] | {mean:.4f} [" in subsets.split("| rag | ")[1]
    (run / "subsets.md").unlink()
    stage = {"val": {"rouge_l": {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}}}
    (run / "synthetic" / "rounds.json").write_text(json.dumps({"rest-pg": {"sft": stage, "round_1": stage}}))
    assert main(["report", str(run)]) == 0
    assert (run / "subsets.md").read_text() == subsets  # written again from the config and the predictions
    assert "| rest-pg | round_1 | 0.500 [0.250, 0.750] |" in (run / "synthetic" / "rounds.md").read_text()
    assert (run / "synthetic" / "rounds.png").stat().st_size > 0
    split = (run / "synthetic" / "timings.md").read_text()
    assert "| rag: evaluation |" in split and split in capsys.readouterr().out


def test_compare_pairs_two_predictions_files_on_seen_and_held_out_wordings(tmp_path, capsys):
    from restpg_dspy.experiments import TableConfig, load_task

    config = tmp_path / "choice.yaml"
    config.write_text("synthetic_task: implicit_choice\nsynthetic_train_users: 2\nsynthetic_test_users: 8\n")
    _, testset = load_task("synthetic", TableConfig.from_file(config))
    files = []
    for name, bonus in (("a", 0.5), ("b", 0.0)):  # A beats B by 0.5 on held-out wordings only
        rows = [
            {"id": e.id, "user_id": e.user_id, "rouge_l": 0.25 + (bonus if e.wording == "held_out" else 0.0)}
            for e in testset
        ]
        files.append(tmp_path / name / "m.predictions.jsonl")
        files[-1].parent.mkdir()
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", *map(str, files), "--config", str(config)]) == 0
    table = capsys.readouterr().out
    held_out = sum(e.wording == "held_out" for e in testset)
    assert 0 < held_out < len(testset)
    users = len({e.user_id for e in testset if e.wording == "held_out"})
    assert f"| a/m − b/m | held_out (n={held_out}, {users} users) | +0.500 [+0.500, +0.500] |" in table
    seen = len({(e.fact, e.traits["wording"]) for e in testset if e.wording == "seen"})
    assert f"| a/m − b/m | seen (n={len(testset) - held_out}, {seen} wordings) | +0.000 [+0.000, +0.000] |" in table
    twin = tmp_path / "c" / "a" / "m.predictions.jsonl"  # the same ending as A's: named by one more folder
    twin.parent.mkdir(parents=True)
    twin.write_text(files[0].read_text())
    assert main(["compare", str(twin), str(files[0])]) == 0
    assert "| c/a/m − " in capsys.readouterr().out
    assert main(["compare", *map(str, files), "--names", "x,x"]) == 2
    assert "two different names" in capsys.readouterr().err
    files[1].write_text(files[1].read_text() + "{not json\n")
    assert main(["compare", *map(str, files)]) == 2
    assert f"{files[1]}, line {len(testset) + 1}: not valid JSON" in capsys.readouterr().err


def test_notes_grades_the_teacher_notes_kept_reasoning_and_round_responses_of_a_run(tmp_path, capsys):
    from restpg_dspy.experiments import TableConfig, load_task

    config = tmp_path / "choice.yaml"
    config.write_text("synthetic_task: implicit_choice\nsynthetic_train_users: 4\nsynthetic_test_users: 2\n")
    trainset = load_task("synthetic", TableConfig.from_file(config))[0][:4]
    run = tmp_path / "run"
    assert main(["notes", str(run), "--config", str(config)]) == 2
    assert f"{run} is not a compile run directory" in capsys.readouterr().err
    (run / "round_1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"reasoning_field": "reasoning"}))
    wrong = [next(o for o in e.options if o != e.answer) for e in trainset]
    teacher = [{"id": e.id, "reasoning": f"- Post [1] tells. So: {e.answer}."} for e in trainset[:3]]
    teacher += [{"id": trainset[3].id, "error": "the teacher failed"}]  # no notes: not graded
    kept = [
        {
            "id": e.id,
            "trace": [{"predictor": "reason", "outputs": {"reasoning": notes}}, {"outputs": {"response": response}}],
        }
        for e, notes, response in zip(
            trainset,
            [wrong[0], "[1]\n\n[2]", trainset[2].answer, trainset[3].answer],
            [f"I pick {trainset[0].answer}.", f"I pick {wrong[1]}.", "", f"I pick {trainset[3].answer}."],
            strict=True,
        )
    ]
    failed = {"id": trainset[0].id, "error": "the sample failed"}  # no trace: not graded
    (run / "teacher_reasoning.jsonl").write_text("".join(json.dumps(r) + "\n" for r in teacher))
    (run / "round_1/kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run / "round_1/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*kept, *kept[:2], failed]))
    assert main(["notes", str(run), "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["reasoning", "n"]
    assert lines[0].endswith("right option only  a wrong option  no option  cites a post")
    assert lines[1].split() == ["teacher", "3", "1.000", "0.000", "0.000", "1.000"]
    assert lines[2].split() == ["round_1", "kept", "4", "0.500", "0.250", "0.250", "0.000"]
    assert lines[3] == ""
    assert lines[4].split() == ["responses", "n", "right", "option", "only"]
    assert lines[5].split() == ["round_1", "sampled", "6", "0.500"]  # right: kept 0 and 3, and kept 0 again
    assert lines[6].split() == ["round_1", "kept", "4", "0.500"]
    kept[0]["id"] = "u-999-0"
    (run / "round_1/kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert main(["notes", str(run), "--config", str(config)]) == 2
    assert "round_1 kept: examples ['u-999-0'] are not in the training split" in capsys.readouterr().err
    kept[0]["id"] = trainset[0].id
    for sample in kept:  # a program without a reasoning step (ReST-EM): its responses alone are graded
        sample["trace"] = sample["trace"][1:]
    (run / "round_1/kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run / "round_1/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run / "teacher_reasoning.jsonl").write_text("")
    assert main(["notes", str(run), "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["round_1", "sampled", "4", "0.500"],
        ["round_1", "kept", "4", "0.500"],
    ]
    for file in ("kept", "samples"):
        (run / f"round_1/{file}.jsonl").write_text("")
    assert main(["notes", str(run), "--config", str(config)]) == 2
    assert "holds no teacher notes and no sampled responses" in capsys.readouterr().err


def test_truncation_warnings_are_counted_not_printed(tiny_model_dir, caplog):
    lm = restpg_dspy.lm(f"local:{tiny_model_dir}", cache=False, max_tokens=3)
    counter = TruncationCounter()
    logger = logging.getLogger("dspy.clients.lm")
    logger.addFilter(counter)
    try:
        lm("Tell me a long story.")  # 3 tokens: cut off, and DSPy warns
        logger.warning("another warning")
    finally:
        logger.removeFilter(counter)
    assert counter.count == 1
    assert [r.getMessage() for r in caplog.records if r.name == "dspy.clients.lm"] == ["another warning"]


def test_faults_that_are_not_input_mistakes_keep_their_traceback(tmp_path, monkeypatch):
    import restpg_dspy.cli

    def broken(run_dir):
        raise ValueError("an internal invariant broke")  # a bug, not a UsageError: never one line

    monkeypatch.setattr(restpg_dspy.cli, "run_report", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["report", str(tmp_path)])
    monkeypatch.undo()
    from restpg_dspy.errors import UsageError

    with pytest.raises(UsageError, match="neither a compile run"):
        main(["--debug", "report", str(tmp_path)])
