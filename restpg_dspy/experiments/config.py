"""The settings of an experiment: one dataclass for config files, the command line and the demo.

Example:
    >>> from restpg_dspy.experiments import TableConfig
    >>> TableConfig(methods=["rag", "rest-pg"]).methods
    ['rag', 'rest-pg']
    >>> TableConfig.help("k")
    'Profile items retrieved.'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.experiments.registry import METHODS, METRIC_NAMES, RETRIEVERS, TASK_SPECS, check_name


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TableConfig:
    """Everything one experiment (a table of methods x tasks) needs; the same keys are read from YAML or TOML files.

    Each field's help text (:meth:`help`) is also the help of its command-line option.
    """

    run_dir: str = field(
        default="runs/table", metadata=_help("Where compile runs, the evaluation cache and outputs go.")
    )
    student: str = field(default="local", metadata=_help("Backend of the trained model: local, local:<path or hf id>."))
    teacher: str | None = field(
        default=None,
        metadata=_help(
            "Backend that writes hindsight reasoning (default: the student); 'oracle' is the implicit_choice task's "
            "oracle, standing in for a large teacher LM offline."
        ),
    )
    judge: str | None = field(default=None, metadata=_help("Backend of an LLM judge; adds the llm_judge metric."))
    tasks: list[str] = field(default_factory=lambda: ["synthetic"], metadata=_help(f"Tasks: {TASK_SPECS}."))
    synthetic_task: str = field(
        default="implicit_choice", metadata=_help("The task 'synthetic' generates: implicit_choice or life_facts.")
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata=_help(f"Rows of the table: {', '.join(METHODS)}.")
    )
    metrics: list[str] = field(
        default_factory=lambda: ["rouge_1", "rouge_l", "meteor"],
        metadata=_help(f"Reported metrics: {', '.join(METRIC_NAMES)} (llm_judge is added whenever a judge is set)."),
    )
    reward: str = field(
        default="rouge_l",
        metadata=_help("The metric that scores E-step samples; a+b is the mean of two, 0.7*a+0.3*b a weighted mean."),
    )
    train_limit: int | None = field(default=None, metadata=_help("Most training examples per task (LongLaMP)."))
    test_limit: int | None = field(default=None, metadata=_help("Most test examples per task (LongLaMP)."))
    synthetic_train_users: int = field(default=12, metadata=_help("Users in the synthetic training split."))
    synthetic_test_users: int = field(default=16, metadata=_help("Users in the synthetic test split."))
    seed: int = field(default=0, metadata=_help("Data sampling seed."))
    retriever: str = field(default="bm25", metadata=_help(f"Profile retriever: {', '.join(RETRIEVERS)}."))
    k: int = field(default=2, metadata=_help("Profile items retrieved."))
    max_tokens: int = field(default=128, metadata=_help("Token budget of each generation (the LMs' default)."))
    reasoning_max_tokens: int | None = field(
        default=None, metadata=_help("Token budget of the reasoning step (default: max_tokens).")
    )
    response_max_tokens: int | None = field(
        default=None, metadata=_help("Token budget of the response step (default: max_tokens).")
    )
    num_threads: int = field(default=16, metadata=_help("Concurrent program runs."))
    optimizer: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("Settings of the optimizers (fields of RESTPGConfig: rounds, samples_per_input, ...)."),
    )
    train_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Fine-tuning settings (see restpg_dspy.finetune.LoRATrainingConfig).")
    )

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        check_name("retriever", self.retriever, RETRIEVERS)
        from restpg_dspy.data import TASKS

        if self.synthetic_task not in TASKS:
            raise UsageError(f"unknown synthetic_task {self.synthetic_task!r}; choose one of {sorted(TASKS)}")
        from restpg_dspy.programs.writers import check_token_budget

        for name in ("max_tokens", "reasoning_max_tokens", "response_max_tokens"):
            check_token_budget(name, getattr(self, name))

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one field."""
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TableConfig:
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; ``overrides`` that are not ``None`` win.

        Raises:
            UsageError: the file is missing, unreadable, or has keys this config does not know (named).
        """
        path = Path(path)
        if not path.exists():
            raise UsageError(f"config file {path} does not exist")
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a mapping of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
