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
from restpg_dspy.experiments.registry import DEFAULT_METHODS, METHODS, METRIC_NAMES, RETRIEVERS, TASK_SPECS, check_name

_OVERRIDABLE = ("teacher", "optimizer", "train_kwargs")


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
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=_help(f"Rows of the table: {', '.join(METHODS)} (default: all but reference)."),
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
    synthetic_val_users: int = field(
        default=16, metadata=_help("Users in the synthetic validation split (round curves, budget calibration).")
    )
    synthetic_test_users: int = field(default=16, metadata=_help("Users in the synthetic test split."))
    seed: int = field(
        default=0,
        metadata=_help(
            "Seeds everything seeded: the data, the E-step's samples, LoRA initialisation and data order, and the "
            "oracle's noisy notes. A --seed other than the config file's runs in <run_dir>-seed<N>."
        ),
    )
    retriever: str = field(default="bm25", metadata=_help(f"Profile retriever: {', '.join(RETRIEVERS)}."))
    k: int = field(default=2, metadata=_help("Profile items retrieved."))
    max_tokens: int = field(default=128, metadata=_help("Token budget of each generation (the LMs' default)."))
    reasoning_max_tokens: int | None = field(
        default=None, metadata=_help("Token budget of the reasoning step (default: max_tokens).")
    )
    response_max_tokens: int | None = field(
        default=None, metadata=_help("Token budget of the response step (default: max_tokens).")
    )
    repetition_controls: dict[str, Any] | None = field(
        default=None,
        metadata=_help(
            "The student's repetition controls (repetition_penalty, no_repeat_ngram_size); default: each task's own "
            "(restpg_dspy.tasks.TASKS), {} for none."
        ),
    )
    student_engine: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "Settings of the student's engine that change its speed, never its outputs (local: merged_adapters, "
            "max_batch_size; see restpg_dspy.lm); not part of any run's identity."
        ),
    )
    num_threads: int = field(default=16, metadata=_help("Concurrent program runs."))
    optimizer: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("Settings of the optimizers (fields of RESTPGConfig: rounds, samples_per_input, ...)."),
    )
    train_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Fine-tuning settings (see restpg_dspy.training.LoRATrainingConfig).")
    )
    overrides: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata=_help(
            "Per-method settings over the shared ones: {method: {teacher, optimizer, train_kwargs}} (optimizer and "
            "train_kwargs are merged key by key), e.g. a baseline's own training budget."
        ),
    )
    shared_dir: str | None = field(
        default=None,
        metadata=_help(
            "A folder for compile runs, adapters and the evaluation cache that several configs share: each compile "
            "run is named by its method and a digest of its settings, so configs that run a method with the same "
            "settings (one per condition, say) run it once."
        ),
    )
    personal: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "Settings of the '<method>+personal' rows' personal adapters (fields of PersonalAdaptersConfig: r, "
            "lora_alpha, num_train_epochs, learning_rate, train_kwargs), and k: the profile items their program "
            "shows (default: k; another value, 0 to remove the profile, also adds the compiled program alone at "
            "that k as the row '<method>@k<k>')."
        ),
    )
    round_curves: bool = field(
        default=False,
        metadata=_help(
            "After the table, score every stage (SFT, each round) of each compiled method on the validation split "
            "and on the held-out-wording test examples: rounds.json and rounds.png."
        ),
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
        from restpg_dspy.optimizers.personal import PersonalAdaptersConfig

        knobs = {f.name for f in dataclasses.fields(PersonalAdaptersConfig)} - {"run_dir", "num_threads", "verbose"}
        unknown = sorted(set(self.personal) - knobs - {"k"})
        if unknown:
            raise UsageError(f"personal: unknown settings {unknown}; known: {sorted(knobs | {'k'})}")
        for method, settings in self.overrides.items():
            check_name("method of overrides", method, METHODS)
            unknown = sorted(set(settings) - set(_OVERRIDABLE))
            if unknown:
                raise UsageError(f"overrides of {method!r}: unknown keys {unknown}; known: {list(_OVERRIDABLE)}")
        for where, settings in [("optimizer", self.optimizer), ("train_kwargs", self.train_kwargs)] + [
            (f"overrides of {m!r}", {**o.get("optimizer", {}), **o.get("train_kwargs", {})})
            for m, o in self.overrides.items()
        ]:
            if "seed" in settings:
                raise UsageError(f"{where}: set the seed at the top level (seed:), which seeds every part of a run")

    def method_settings(self, method: str) -> dict[str, Any]:
        """The ``teacher``, ``optimizer`` and ``train_kwargs`` that ``method`` compiles with: the shared ones, its
        overrides merged over them, and the seed.

        Example:
            >>> config = TableConfig(train_kwargs={"num_train_epochs": 6, "learning_rate": 0.002},
            ...                      overrides={"sft": {"train_kwargs": {"num_train_epochs": 2}}})
            >>> config.method_settings("sft")["train_kwargs"]
            {'num_train_epochs': 2, 'learning_rate': 0.002, 'seed': 0}
        """
        own = self.overrides.get(method, {})
        return {
            "teacher": own.get("teacher", self.teacher),
            "optimizer": {**self.optimizer, **own.get("optimizer", {}), "seed": self.seed},
            "train_kwargs": {**self.train_kwargs, **own.get("train_kwargs", {}), "seed": self.seed},
        }

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
        seed = overrides.get("seed")
        if seed is not None and seed != data.get("seed", 0) and overrides.get("run_dir") is None:
            # Another seed never writes into the first seed's runs.
            for key in ("run_dir", "shared_dir"):
                if data.get(key) or key == "run_dir":
                    data[key] = f"{data.get(key) or cls.run_dir}-seed{seed}"
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
