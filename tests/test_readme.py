"""The README's Python examples run as written (on the real embedded model)."""

import ast
import json
import re

import dspy
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_write_your_own_program_example_runs(capsys):
    namespace = {"__name__": "readme"}
    try:
        exec(compile(readme_block("### Write your own program"), "README.md", "exec"), namespace)
        reason, write = dspy.settings.lm.history[-2:]
    finally:
        dspy.configure(lm=None)  # the example configures DSPy globally
    printed = capsys.readouterr().out.strip()
    example = namespace["example"]
    # It reasoned over the whole profile, then wrote from its notes, and printed what the second step wrote.
    assert all(f"[{n}] Post:" in reason["messages"][-1]["content"] for n in range(1, len(example.profile) + 1))
    notes = reason["outputs"][0].strip()
    assert notes and notes in write["messages"][-1]["content"]
    assert printed and printed in write["outputs"][0]


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    from restpg_dspy.data import synthetic

    monkeypatch.chdir(tmp_path)  # the example writes runs/readme/ in the working folder
    exec(compile(readme_block("## The Python API"), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    summary = ast.literal_eval(re.search(r"^\{'mean'.*$", out, flags=re.MULTILINE).group(0))
    paired = ast.literal_eval(re.search(r"^\{'mean_difference'.*$", out, flags=re.MULTILINE).group(0))
    # Two test users with one request each: both scored, no error, the mean inside its interval.
    assert summary["n"] == 2 and summary["errors"] == 0 and 0 <= summary["ci_low"] <= summary["mean"] <= 1
    assert paired["n_pairs"] == 2 and paired["ci_low"] <= paired["mean_difference"] <= paired["ci_high"]
    saved = (tmp_path / "runs/readme/program.json").read_text()
    assert "+lora-" in saved  # the saved program serves the adapter the compile trained
    kept = [json.loads(line) for line in (tmp_path / "runs/readme/round_1/kept.jsonl").read_text().splitlines()]
    # Both training inputs kept their best distinct traces: at most max_per_input (2) of their 2 samples each.
    assert {row["id"] for row in kept} == {e.id for e in synthetic("train", seed=0, users=2, requests_per_user=1)}
    assert all(sum(row["id"] == i for row in kept) <= 2 for i in {row["id"] for row in kept})


def test_offline_table_config_matches_the_demo():
    from restpg_dspy.experiments import TableConfig
    from restpg_dspy.experiments.demo import demo_config
    from restpg_dspy.experiments.registry import DEFAULT_METHODS

    offline = TableConfig.from_file(REPO / "configs/offline.yaml")
    demo = demo_config()
    assert offline.methods == list(DEFAULT_METHODS)
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "methods"):
            assert getattr(offline, name) == getattr(demo, name), name


def test_ordering_control_differs_from_the_experiment_only_in_its_teacher_and_methods():
    from restpg_dspy.experiments import TableConfig
    from restpg_dspy.experiments.registry import DEFAULT_METHODS

    experiment = TableConfig.from_file(REPO / "configs/ordering.yaml")
    control = TableConfig.from_file(REPO / "configs/ordering_self_teacher.yaml")
    assert sorted(experiment.methods) == sorted(DEFAULT_METHODS) and experiment.teacher == "oracle"
    assert control.teacher is None
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "methods", "teacher"):
            assert getattr(control, name) == getattr(experiment, name), name
    # Sized for the truth: >= 128 training examples, >= 2 rounds of >= 4 samples, >= 240 test examples from >= 80 users.
    assert experiment.synthetic_train_users * 3 >= 128 and experiment.synthetic_test_users >= 80
    assert experiment.optimizer["rounds"] >= 2 and experiment.optimizer["samples_per_input"] >= 4


@pytest.mark.parametrize(
    ("variant_file", "lever", "value"),
    [
        ("ordering_explore.yaml", "sft_train_kwargs", {"num_train_epochs": 3, "learning_rate": 0.001}),
        ("ordering_unseen_users.yaml", "sft_fraction", 0.5),
    ],
)
def test_each_ordering_variant_differs_from_the_experiment_in_one_optimizer_setting_and_its_methods(
    variant_file, lever, value
):
    from restpg_dspy.experiments import TableConfig

    experiment = TableConfig.from_file(REPO / "configs/ordering.yaml")
    variant = TableConfig.from_file(REPO / "configs" / variant_file)
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "methods", "optimizer"):
            assert getattr(variant, name) == getattr(experiment, name), name
    assert variant.optimizer.pop(lever) == value
    assert variant.optimizer == experiment.optimizer and variant.methods == ["rest-pg"]


def test_selection_conditions_differ_only_in_their_teacher_and_the_notes_budget():
    from restpg_dspy.experiments import TableConfig

    noisy = TableConfig.from_file(REPO / "configs/selection/noisy.yaml")
    budget = TableConfig.from_file(REPO / "configs/selection/budget.yaml")
    assert (noisy.teacher, budget.teacher) == ("oracle:0.3", "oracle")
    assert noisy.shared_dir == budget.shared_dir and noisy.run_dir != budget.run_dir
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "teacher", "overrides"):
            assert getattr(noisy, name) == getattr(budget, name), name
    for method in ("sft", "rest-em"):  # they read no notes: one run, shared by both conditions
        assert noisy.method_settings(method)["optimizer"] == budget.method_settings(method)["optimizer"]
        assert noisy.method_settings(method)["train_kwargs"] == budget.method_settings(method)["train_kwargs"]
    for method in ("sft-reasoning", "rest-pg"):
        assert budget.method_settings(method)["optimizer"]["sft_fraction"] == 0.25
        assert "sft_fraction" not in noisy.method_settings(method)["optimizer"]
    assert noisy.synthetic_task == "implicit_choice_v2" and noisy.optimizer["rounds"] == 3
    assert noisy.synthetic_train_users >= 48 and noisy.round_curves


def test_the_longlamp_configs_list_the_hash_split_and_differ_only_in_their_teacher(shared_sample):
    import re

    from restpg_dspy.data import load_longlamp
    from restpg_dspy.experiments import TableConfig

    path = REPO / "configs/longlamp_abstract.yaml"
    evidence = TableConfig.from_file(path)
    self_teacher = TableConfig.from_file(REPO / "configs/longlamp_abstract_self_teacher.yaml")
    assert (evidence.teacher, self_teacher.teacher) == ("evidence", None)
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "teacher"):
            assert getattr(evidence, name) == getattr(self_teacher, name), name
    (task,) = evidence.tasks
    assert task.endswith("longlamp_abstract_sample.jsonl") and "{split}" not in task
    comments = path.read_text()
    for split in ("train", "test"):
        block = re.search(rf"#   {split}:(.*?)(?=\n#   [a-z]+:|\n# On)", comments, re.S).group(1)
        listed = re.findall(r"dev-\d+", block)
        loaded = [e.id for e in load_longlamp("abstract_generation", split, path=shared_sample, split_by_hash=True)]
        assert listed == loaded, split
    assert {"rouge_1", "rouge_l", "meteor", "loop_rate"} <= set(evidence.metrics) and "reference" in evidence.methods


@pytest.mark.parametrize(
    ("personal_file", "source_file"),
    [
        ("personal/synthetic.yaml", "selection/noisy.yaml"),
        ("personal/synthetic_no_profile.yaml", "selection/noisy.yaml"),
        ("personal/longlamp.yaml", "longlamp_abstract.yaml"),
    ],
)
def test_personal_configs_reuse_their_source_experiments_compile_runs(personal_file, source_file):
    from restpg_dspy.experiments import TableConfig
    from restpg_dspy.experiments.table import compile_dir, task_slug

    personal = TableConfig.from_file(REPO / "configs" / personal_file)
    source = TableConfig.from_file(REPO / "configs" / source_file)
    assert personal.shared_dir == source.shared_dir and personal.personal
    assert personal.tasks == source.tasks
    slug = task_slug(personal.tasks[0])
    for method in ("sft", "rest-pg"):
        assert compile_dir(personal, slug, method) == compile_dir(source, slug, method), method
