"""The knobs of REST-PG and its baselines: one dataclass for the optimizer, the command line and config files.

Example:
    >>> from restpg_dspy.optimizers.config import RESTPGConfig
    >>> RESTPGConfig(rounds=3, samples_per_input=32, max_per_input=10).rounds
    3
    >>> RESTPGConfig.help("top_fraction")
    "Keep at most this fraction of each input's samples, best first (None: no limit)."
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.programs.writers import check_token_budget

# Settings that change how a run goes, not what it computes: left out of a run directory's identity.
_OPERATIONAL = ("run_dir", "num_threads", "verbose")


@dataclass
class RESTPGConfig:
    """Everything REST-PG's stages are told, with defaults a newcomer can run on 2 CPU cores.

    The paper's setting is ``rounds=3, samples_per_input=32, max_per_input=10`` with a reward threshold; the baselines
    (SFT, SFT with reasoning, ReST-EM) are this config with stages switched off. Field help: :meth:`help`.
    """

    rounds: int = field(default=2, metadata={"help": "EM rounds (0 stops after SFT)."})
    samples_per_input: int = field(default=4, metadata={"help": "Traces sampled per training input in each E-step."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the E-step."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus mass of the E-step."})
    threshold: float | None = field(
        default=None, metadata={"help": "Keep traces with reward >= threshold (None: no absolute cut-off)."}
    )
    top_fraction: float | None = field(
        default=None,
        metadata={"help": "Keep at most this fraction of each input's samples, best first (None: no limit)."},
    )
    max_per_input: int = field(
        default=2,
        metadata={"help": "Keep at most this many distinct traces per input (the paper: 10 of 32, above a threshold)."},
    )
    reasoning_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of the reasoning step of the program sampled, trained and returned "
            "(None: the program's own)."
        },
    )
    response_max_tokens: int | None = field(
        default=None, metadata={"help": "Token budget of the response step, likewise."}
    )
    reasoning_length_target: int | None = field(
        default=None,
        metadata={
            "help": "With reasoning_length_penalty, a reasoning budget for the selection: a sample's reward is "
            "lowered by penalty * (tokens - target) / target when its reasoning is longer than target tokens "
            "(None: no penalty)."
        },
    )
    reasoning_length_penalty: float = field(
        default=0.0, metadata={"help": "The penalty's weight (see reasoning_length_target)."}
    )
    restart_from_base: bool = field(
        default=True,
        metadata={"help": "Each M-step trains a fresh adapter from the base weights (else it continues the last one)."},
    )
    run_dir: str | None = field(
        default=None, metadata={"help": "Where state is written and resumed from (default: a new temporary folder)."}
    )
    train_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Fine-tuning settings passed to lm.finetune (for the local provider: "
            "restpg_dspy.training.LoRATrainingConfig); adapters go to <run_dir>/adapters unless set."
        },
    )
    sft_train_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Fine-tuning settings of the SFT stage only, over train_kwargs (None: the same as the M-steps). "
            "A lighter SFT stage than the M-steps leaves the policy uncertain enough for the E-step to explore: an "
            "SFT stage that memorises the trainset samples the same trace for every draw."
        },
    )
    sft_fraction: float | None = field(
        default=None,
        metadata={
            "help": "The SFT stage (and the teacher) sees only this fraction of the training users, chosen by seed; "
            "the E-steps sample every input (None: all of them). An SFT stage that memorises short outputs leaves "
            "the E-step nothing to select on the inputs it trained on: on the rest, the reward tells samples apart."
        },
    )
    num_threads: int = field(default=16, metadata={"help": "Concurrent program runs (the local engine batches them)."})
    teacher_reasoning: bool = field(
        default=True,
        metadata={
            "help": "Stage 1 on: a teacher writes hindsight reasoning (the program needs a reasoning predictor)."
        },
    )
    sft: bool = field(
        default=True,
        metadata={"help": "Stage 2 on: fine-tune on the teacher's reasoning (if any) and the real outputs."},
    )
    reward_weighted: bool = field(
        default=True, metadata={"help": "Weight each kept trace by its reward (normalised to mean 1) in the M-step."}
    )
    teacher_retries: int = field(
        default=2, metadata={"help": "Extra attempts per example when the teacher fails or answers nothing."}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds the samples (each sample's seed derives from it, the example id, the round, its index)."
        },
    )
    reasoning_field: str = field(default="reasoning", metadata={"help": "Output field of the reasoning predictor."})
    target_field: str = field(
        default="output", metadata={"help": "Field of the examples that holds what the user really wrote."}
    )
    verbose: bool = field(default=True, metadata={"help": "Progress bars and a one-line summary per stage."})

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.samples_per_input < 1 or self.max_per_input < 1:
            raise UsageError("rounds must be >= 0, samples_per_input and max_per_input >= 1")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise UsageError("top_fraction must be in (0, 1]")
        if self.sft_fraction is not None and not 0 < self.sft_fraction <= 1:
            raise UsageError(f"sft_fraction must be in (0, 1], not {self.sft_fraction}")
        if self.sft_fraction is not None and not self.sft:
            raise UsageError("sft_fraction chooses the SFT stage's examples; it needs sft=True")
        check_token_budget("reasoning_max_tokens", self.reasoning_max_tokens)
        check_token_budget("response_max_tokens", self.response_max_tokens)
        check_token_budget("reasoning_length_target", self.reasoning_length_target)
        if self.reasoning_length_penalty < 0 or (
            self.reasoning_length_penalty > 0 and self.reasoning_length_target is None
        ):
            raise UsageError("reasoning_length_penalty must be >= 0 and needs a reasoning_length_target")
        self.train_kwargs = dict(self.train_kwargs or {})
        if self.sft_train_kwargs is not None:
            self.sft_train_kwargs = dict(self.sft_train_kwargs)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one field."""
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    def identity(self) -> dict[str, Any]:
        """The settings that decide what a run computes (a run directory refuses a run whose identity differs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _OPERATIONAL}
