"""Experiment configs: per-method overrides, seeds, shared compile runs, round curves and budget calibration."""

import json

import pytest

from restpg_dspy.experiments import TableConfig, run_table
from restpg_dspy.experiments.calibration import calibrate, choose_best_on_val, choose_room
from restpg_dspy.experiments.table import compile_dir, teacher_lm
from restpg_dspy.training import trainer


@pytest.fixture
def count_trainings(monkeypatch):
    trainings = []
    fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda job, tokenizer=None: trainings.append(job) or fit(job, tokenizer))
    return trainings


def tiny(tmp_path, tiny_model_dir, **settings):
    base = {
        "run_dir": str(tmp_path / "table"),
        "student": f"local:{tiny_model_dir}",
        "synthetic_task": "implicit_choice_v2",
        "synthetic_train_users": 2,
        "synthetic_val_users": 1,
        "synthetic_test_users": 4,
        "k": 4,
        "max_tokens": 6,
        "metrics": ["option_accuracy", "rouge_l"],
        "optimizer": {"rounds": 1, "samples_per_input": 2, "verbose": False},
        "train_kwargs": {"max_steps": 1},
    }
    return TableConfig(**{**base, **settings})


def test_a_seed_reseeds_every_part_and_runs_in_folders_of_its_own(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("run_dir: runs/x\nshared_dir: runs/x-shared\nteacher: 'oracle:0.3'\nseed: 0\n")
    first = TableConfig.from_file(path, seed=0)
    assert (first.run_dir, first.shared_dir) == ("runs/x", "runs/x-shared")
    second = TableConfig.from_file(path, seed=3)
    assert (second.run_dir, second.shared_dir) == ("runs/x-seed3", "runs/x-shared-seed3")
    assert TableConfig.from_file(path, seed=3, run_dir="elsewhere").run_dir == "elsewhere"
    settings = second.method_settings("rest-pg")
    assert settings["optimizer"]["seed"] == settings["train_kwargs"]["seed"] == 3
    assert teacher_lm(second.teacher, second).engine.seed == 3
    assert teacher_lm(first.teacher, first).engine.seed == 0
    assert teacher_lm(None, second) is None
    with pytest.raises(ValueError, match="set the seed at the top level"):
        TableConfig(optimizer={"seed": 1})


def test_overrides_merge_over_the_shared_settings_and_are_checked():
    config = TableConfig(
        teacher="oracle",
        optimizer={"rounds": 3, "samples_per_input": 4},
        train_kwargs={"num_train_epochs": 2, "learning_rate": 0.002},
        overrides={"rest-pg": {"teacher": "oracle:0.3", "optimizer": {"sft_fraction": 0.25}}},
    )
    own = config.method_settings("rest-pg")
    assert own["teacher"] == "oracle:0.3"
    assert own["optimizer"] == {"rounds": 3, "samples_per_input": 4, "sft_fraction": 0.25, "seed": 0}
    assert config.method_settings("sft")["teacher"] == "oracle"
    with pytest.raises(ValueError, match="unknown method of overrides 'magic'"):
        TableConfig(overrides={"magic": {}})
    with pytest.raises(ValueError, match=r"overrides of 'sft': unknown keys \['epochs'\]"):
        TableConfig(overrides={"sft": {"epochs": 3}})


def test_configs_sharing_a_folder_run_a_method_with_the_same_settings_once(tmp_path, tiny_model_dir, count_trainings):
    shared = str(tmp_path / "shared")
    noisy = tiny(tmp_path, tiny_model_dir, run_dir=str(tmp_path / "noisy"), shared_dir=shared, teacher="oracle:0.3")
    exact = tiny(tmp_path, tiny_model_dir, run_dir=str(tmp_path / "exact"), shared_dir=shared, teacher="oracle")
    # Plain SFT never asks the teacher: one run for both; SFT with reasoning learns from each teacher's notes.
    assert compile_dir(noisy, "synthetic", "rest-em") == compile_dir(exact, "synthetic", "rest-em")
    assert compile_dir(noisy, "synthetic", "sft-reasoning") != compile_dir(exact, "synthetic", "sft-reasoning")
    for config in (noisy, exact):
        config.methods = ["rest-em", "sft-reasoning"]
        config.round_curves = True
    run_table(noisy)
    # A long experiment runs a few methods at a time: the table shows what earlier runs of the same settings left.
    assert set(run_table(exact, only=["rest-em"])) == {"rest-em"}
    results = run_table(exact, only=["sft-reasoning"])
    assert set(results) == {"rest-em", "sft-reasoning"}
    rest_em = json.loads((tmp_path / "noisy" / "results.json").read_text())["rest-em"]
    assert results["rest-em"] == rest_em  # the same shared run, read back from its predictions
    # rest-em: SFT stage + 1 round; sft-reasoning: one training per teacher.
    assert len(count_trainings) == 4
    runs = json.loads((tmp_path / "exact" / "synthetic" / "compile_runs.json").read_text())
    assert runs["rest-em"] == str(compile_dir(exact, "synthetic", "rest-em"))
    curves = json.loads((tmp_path / "exact" / "synthetic" / "rounds.json").read_text())
    assert list(curves["rest-em"]) == ["sft", "round_1"] and list(curves["sft-reasoning"]) == ["sft"]
    scores = curves["rest-em"]["round_1"]
    assert scores["val"]["option_accuracy"]["n"] == 3 and scores["test held_out"]["option_accuracy"]["n"] == 9
    assert (tmp_path / "exact" / "synthetic" / "rounds.png").stat().st_size > 0
    timings = json.loads((tmp_path / "exact" / "synthetic" / "timings.json").read_text())
    assert set(timings) == {"rest-em", "sft-reasoning", "round_curves"}
    assert all(t["compile_s"] >= 0 and t["evaluate_s"] >= 0 for m, t in timings.items() if m != "round_curves")
    history = json.loads((tmp_path / "exact" / "synthetic" / "rest-em.history.json").read_text())
    assert [entry["stage"] for entry in history] == ["sft", "round_1"] and "option_spread_rate" in history[1]
    # Other settings make another run: predictions of the old settings are not shown as the new method's.
    exact.optimizer = {**exact.optimizer, "samples_per_input": 3}
    assert set(run_table(exact, only=["sft-reasoning"])) == {"sft-reasoning"}
    with pytest.raises(ValueError, match=r"only=\['rag'\]: not among the config's methods"):
        run_table(exact, only=["rag"])


def test_a_table_moved_without_its_adapters_trains_only_the_stages_it_still_needs(
    tmp_path, tiny_model_dir, count_trainings, monkeypatch
):
    import shutil

    import dspy
    from dspy.clients.cache import Cache

    from restpg_dspy.optimizers import RESTPG

    def new_machine():  # the run directories and the evaluation cache came along; adapters and DSPy's cache did not
        shutil.rmtree(tmp_path / "shared" / "synthetic" / "adapters")
        empty = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
        monkeypatch.setattr(dspy, "cache", empty)

    config = tiny(tmp_path, tiny_model_dir, shared_dir=str(tmp_path / "shared"), methods=["rest-em"], round_curves=True)
    train = RESTPG._train

    def killed_before_round_1(self, job, stage, start, rows):
        if stage == "round_1":
            raise KeyboardInterrupt  # the session ended after round 1's samples were drawn
        return train(self, job, stage, start, rows)

    monkeypatch.setattr(RESTPG, "_train", killed_before_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_table(config)
    assert len(count_trainings) == 1
    monkeypatch.setattr(RESTPG, "_train", train)
    new_machine()
    # Round 1's samples are recorded and the SFT stage was scored on the curves' examples as soon as it was trained:
    # nothing needs the SFT stage's weights again, so only round 1 trains.
    first = run_table(config)
    assert len(count_trainings) == 2
    curves = json.loads((tmp_path / "table" / "synthetic" / "rounds.json").read_text())
    assert list(curves["rest-em"]) == ["sft", "round_1"]
    new_machine()
    assert run_table(config) == first and len(count_trainings) == 2  # everything from the evaluation cache


def test_repetition_controls_come_from_the_task_unless_the_config_sets_them(tmp_path, tiny_model_dir, monkeypatch):
    import dataclasses

    from restpg_dspy import tasks
    from restpg_dspy.experiments.table import config_lms, task_controls, task_student

    plain = tiny(tmp_path, tiny_model_dir, shared_dir=str(tmp_path / "shared"))
    student = config_lms(plain)[0]
    assert task_controls(plain, "synthetic") == {} and task_student(plain, "synthetic", student) is student
    own = dataclasses.replace(tasks.TASKS["synthetic"], repetition_controls={"repetition_penalty": 1.2})
    monkeypatch.setitem(tasks.TASKS, "synthetic", own)
    assert task_student(plain, "synthetic", student).model == student.model + "?repetition_penalty=1.2"
    unset = dataclasses.replace(plain, repetition_controls={})
    assert task_student(unset, "synthetic", student) is student  # {}: none, whatever the task's defaults
    stronger = dataclasses.replace(plain, repetition_controls={"no_repeat_ngram_size": 3})
    assert task_controls(stronger, "synthetic") == {"no_repeat_ngram_size": 3}
    # Runs with other controls live in other folders; runs without any keep the folders they had.
    folders = {compile_dir(c, "synthetic", "sft") for c in (plain, unset, stronger)}
    assert len(folders) == 3
    monkeypatch.setitem(tasks.TASKS, "synthetic", dataclasses.replace(own, repetition_controls={}))
    assert compile_dir(plain, "synthetic", "sft") == compile_dir(unset, "synthetic", "sft")


def test_student_engine_settings_reach_the_engine_and_leave_run_identities_alone(tmp_path, tiny_model_dir):
    import dataclasses

    from restpg_dspy.experiments.table import config_lms

    plain = tiny(tmp_path, tiny_model_dir, shared_dir=str(tmp_path / "shared"))
    fast = dataclasses.replace(plain, student_engine={"merged_adapters": 1, "max_batch_size": 64})
    engine = config_lms(fast)[0].engine
    assert (engine.merged_adapters, engine.max_batch_size) == (1, 64)
    assert config_lms(plain)[0].engine.merged_adapters == 0
    assert config_lms(fast)[0].model == config_lms(plain)[0].model  # same outputs, same caches
    assert compile_dir(fast, "synthetic", "rest-pg") == compile_dir(plain, "synthetic", "rest-pg")


def test_the_datasets_reference_predictions_are_scored_like_a_method(tmp_path, tiny_model_dir):
    records = [
        {
            "id": f"r{i}",
            "input": f'Generate an abstract for the title "Paper {i}"',
            "output": f"we study topic {i} with care",
            "reference_prediction": f"we study topic {i}" if i % 2 else "an unrelated text",
            "profile": [{"title": f"Earlier {i}", "abstract": f"we study topic {i} before"}],
        }
        for i in range(6)
    ]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = TableConfig(
        run_dir=str(tmp_path / "table"),
        student=f"local:{tiny_model_dir}",
        tasks=[f"longlamp:abstract_generation:{data}"],
        methods=["reference", "no-personalization"],
        metrics=["rouge_l", "loop_rate"],
        max_tokens=4,
    )
    results = run_table(config)
    rows = [json.loads(line) for line in (tmp_path / "table/abstract_generation/reference.predictions.jsonl").open()]
    recorded = {r["id"]: r["reference_prediction"] for r in records}
    assert len(rows) == 3 and all(row["response"] == recorded[row["id"]] for row in rows)  # the test half only
    assert results["reference"]["abstract_generation"]["rouge_l"]["n"] == 3
    assert "truncation_rate" not in results["reference"]["abstract_generation"]  # nothing generated: nothing known
    assert "| reference |" in (tmp_path / "table/table.md").read_text()


def test_calibration_records_every_trial_and_never_trains_one_twice(tmp_path, tiny_model_dir, count_trainings):
    config = tiny(tmp_path, tiny_model_dir, shared_dir=str(tmp_path / "shared"))
    record = tmp_path / "calibration.json"
    entry = calibrate(config, "sft", "best_on_val", [1, 2, 4], record)
    trials = entry["trials"]
    assert entry["chosen"] == choose_best_on_val({float(k): t["val"] for k, t in trials.items()})
    assert {k: t["val"] for k, t in trials.items()} == {
        k: t["option_accuracy"]["mean"] for k, t in ((k, t["val_summary"]) for k, t in trials.items())
    }
    trained = len(count_trainings)
    assert trained == len(trials) >= 2
    room = calibrate(config, "rest-em", "room", [2], record, max_val=1.01, min_spread=0.0)
    assert room["chosen"] == 2 and set(room["trials"]["2"]["explore"]) >= {"option_spread_rate", "reward_spread_rate"}
    assert calibrate(config, "sft", "best_on_val", [1, 2, 4], record)["trials"] == trials
    assert len(count_trainings) == trained  # rest-em's SFT stage at 2 epochs is sft's trial at 2: reused
    saved = json.loads(record.read_text())[config.run_dir]
    assert set(saved) == {"sft", "rest-em"} and saved["sft"]["best_on_val"]["chosen"] == entry["chosen"]
    # Another condition of the same experiment keeps its own trials in the same file.
    other = tiny(tmp_path, tiny_model_dir, shared_dir=str(tmp_path / "shared"), run_dir=str(tmp_path / "other"))
    other.train_kwargs = {"max_steps": 2}
    calibrate(other, "sft", "best_on_val", [1], record)
    assert set(json.loads(record.read_text())) == {config.run_dir, other.run_dir}
    assert len(count_trainings) == trained + 1
    # best_of_grid trains every budget, reusing those another rule of the method recorded, and keeps the best.
    grid = calibrate(config, "sft", "best_of_grid", [1, 2, 4, 8], record)
    assert set(grid["trials"]) == {"1", "2", "4", "8"}
    assert all(grid["trials"][k]["val"] == t["val"] for k, t in trials.items())
    assert len(count_trainings) == trained + 1 + (4 - len(trials))
    assert grid["chosen"] == choose_best_on_val({float(k): t["val"] for k, t in grid["trials"].items()})


def test_choice_rules_follow_their_definitions():
    assert choose_best_on_val({1: 0.5, 2: 0.5}) == 1  # ties go to the smaller budget
    assert choose_best_on_val({1: 0.2, 2: 0.6, 4: 0.4}) == 2
    room = {4: (0.95, None), 2: (0.85, 0.10), 1: (0.40, 0.20)}
    assert choose_room(room, max_val=0.9, min_spread=0.25) == 1  # none reaches the spread: the largest spread
    assert choose_room({4: (0.95, None), 2: (0.92, None)}, max_val=0.9, min_spread=0.25) == 2  # nothing explored
    assert choose_room({4: (0.8, 0.3), 2: (0.5, 0.9)}, max_val=0.9, min_spread=0.25) == 4


def test_personal_rows_add_an_adapter_per_test_user_to_the_compiled_method(
    tmp_path, tiny_model_dir, count_trainings, capsys
):
    config = tiny(tmp_path, tiny_model_dir, methods=["sft", "sft+personal"], personal={"num_train_epochs": 1})
    results = run_table(config)
    out = tmp_path / "table" / "synthetic"
    users = [json.loads(line) for line in (out / "sft+personal.users.jsonl").read_text().splitlines()]
    assert len(users) == 4 and all(row["adapter"] for row in users)  # one per test user
    rows = [json.loads(line) for line in (out / "sft+personal.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(row["personal"] for row in rows)  # every test prediction, by its user's adapter
    assert len(count_trainings) == 1 + 4  # SFT once (the personal row reuses its compile), then each user
    costs = (tmp_path / "table" / "personal.md").read_text().splitlines()[2]
    assert costs.startswith("| synthetic | sft+personal | 4 of 4 |") and "| 12 of 12 |" in costs
    assert costs.endswith(f"| {changed_responses(out, 'sft')} of 12 |")  # the responses the adapters changed
    paired = json.loads((tmp_path / "table" / "paired.json").read_text())["synthetic"]
    assert any(entry["better"] == "sft+personal" and entry["worse"] == "sft" for entry in paired)
    assert set(results) == {"sft", "sft+personal"}
    # The profile removed from the personal rows' prompts (k=0): the compiled program alone at k=0 is a row too.
    config.personal = {"num_train_epochs": 1, "k": 0}
    results = run_table(config, only=["sft+personal"])
    assert set(results) == {"sft", "sft+personal", "sft@k0"}
    assert "[synthetic] sft@k0: option_accuracy=" in capsys.readouterr().out  # its scores are printed too
    paired = json.loads((tmp_path / "table" / "paired.json").read_text())["synthetic"]
    assert any(entry["better"] == "sft+personal" and entry["worse"] == "sft@k0" for entry in paired)
    costs = (tmp_path / "table" / "personal.md").read_text().splitlines()[2]
    assert costs.endswith(f"| {changed_responses(out, 'sft@k0')} of 12 |")  # against the program alone at k=0
    with pytest.raises(ValueError, match=r"personal: unknown settings \['epochs'\]"):
        TableConfig(personal={"epochs": 3})


def changed_responses(out, compared: str) -> int:
    """How many of ``sft+personal``'s test responses differ from ``compared``'s."""
    responses = {}
    for method in (compared, "sft+personal"):
        lines = (out / f"{method}.predictions.jsonl").read_text().splitlines()
        responses[method] = {row["id"]: row["response"] for row in map(json.loads, lines)}
    return sum(text != responses[compared][i] for i, text in responses["sft+personal"].items())
