"""The README's Python examples run as written (on the real embedded model)."""

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
    try:
        exec(compile(readme_block("### Write your own program"), "README.md", "exec"), {"__name__": "readme"})
    finally:
        dspy.configure(lm=None)  # the example configures DSPy globally
    assert capsys.readouterr().out.strip()


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes runs/readme/ in the working folder
    exec(compile(readme_block("## The Python API"), "README.md", "exec"), {"__name__": "readme"})
    assert "'mean'" in capsys.readouterr().out
    assert (tmp_path / "runs/readme/program.json").exists() and (tmp_path / "runs/readme/round_1/kept.jsonl").exists()


def test_offline_table_config_matches_the_demo():
    from restpg_dspy.experiments import METHODS, TableConfig
    from restpg_dspy.experiments.demo import demo_config

    offline = TableConfig.from_file(REPO / "configs/offline.yaml")
    demo = demo_config()
    assert offline.methods == list(METHODS)
    for name in TableConfig.__dataclass_fields__:
        if name not in ("run_dir", "methods"):
            assert getattr(offline, name) == getattr(demo, name), name


def test_ordering_control_differs_from_the_experiment_only_in_its_teacher_and_methods():
    from restpg_dspy.experiments import METHODS, TableConfig

    experiment = TableConfig.from_file(REPO / "configs/ordering.yaml")
    control = TableConfig.from_file(REPO / "configs/ordering_self_teacher.yaml")
    assert sorted(experiment.methods) == sorted(METHODS) and experiment.teacher == "oracle"
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
