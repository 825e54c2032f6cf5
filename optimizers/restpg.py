"""REST-PG: reasoning-enhanced self-training for personalized generation (Salemi et al. 2025) as a DSPy optimizer.

Stages (each one can be switched off; the baselines are such configurations):

1. **Hindsight reasoning**: a teacher LM sees the request, the profile the program retrieved and the text the user
   really wrote, and writes notes on the user that explain it without quoting it.
2. **SFT**: the student LM is fine-tuned (``lm.finetune``) on the program's own prompts: the reasoning predictor on the
   teacher's notes, the response predictor on the real output given those notes.
3. **EM rounds**: the current program samples ``samples_per_input`` full traces per input at ``temperature``; only
   the final response is scored by the metric; the best traces per input are kept (``threshold``,
   ``top_fraction``, ``max_per_input``) and a reward-weighted fine-tune on them gives the next model (a fresh
   adapter from the base weights by default).

Every stage writes readable state into ``run_dir``; re-running the same compile resumes where it stopped.

Example:
    >>> import restpg_dspy
    >>> from restpg_dspy.data import synthetic
    >>> from restpg_dspy.optimizers import RESTPG
    >>> from restpg_dspy.programs import PersonalizedWriter
    >>> optimizer = RESTPG(rounds=2, samples_per_input=8, run_dir="runs/demo")
    >>> program = PersonalizedWriter()
    >>> program.set_lm(restpg_dspy.lm("local"))  # doctest: +SKIP
    >>> compiled = optimizer.compile(program, trainset=synthetic("train"), valset=synthetic("val"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from restpg_dspy.concurrency import run_concurrently
from restpg_dspy.errors import UsageError
from restpg_dspy.evals.metrics import metric_identity
from restpg_dspy.optimizers.config import RESTPGConfig
from restpg_dspy.optimizers.e_step import EStep
from restpg_dspy.optimizers.hindsight import HindsightStage, user_of
from restpg_dspy.optimizers.m_step import MStep, stage_lm
from restpg_dspy.optimizers.run_dir import RunDir
from restpg_dspy.optimizers.traces import (
    Trace,
    output_field,
    predictor_lms,
    trace_rows,
    with_lms,
    without_lms,
)

logger = logging.getLogger(__name__)

Metric = Callable[..., float]
# The per-stage summary fields of ``restpg_history``/``history.json``, in display order.
STAGE_FIELDS = (
    "stage",
    "model",
    "rows",
    "reward_mean",
    "reward_median",
    "reward_p90",
    "keep_rate",
    "inputs_without_kept",
    "distinct_per_input",
    "reward_spread_rate",
    "option_spread_rate",
    "truncation_rate",
    "loop_rate",
    "reasoning_truncation_rate",
    "response_truncation_rate",
    "reasoning_tokens_mean",
    "val_score",
    "val_failed",
    "skipped",
)


@dataclass
class Job:
    """What every stage of one compile shares."""

    template: dspy.Module
    base: dspy.LM
    teacher: dspy.LM
    reasoning_names: set[str]
    run: RunDir
    train_kwargs: dict[str, Any]
    sft_train_kwargs: dict[str, Any]
    sampling_lm: Callable[[dspy.LM], dspy.LM] | None

    def program_on(self, lm: dspy.LM) -> dspy.Module:
        """The program with every predictor on ``lm``."""
        return with_lms(self.template, lambda _: lm)


class RESTPG(HindsightStage, EStep, MStep, Teleprompter):
    """Train a personalized program's LM with reasoning paths and reward-filtered self-training.

    Args:
        metric: Reward ``metric(example, prediction, trace=None) -> float`` on the final response (default ROUGE-L).
        config: The optimizer's knobs (:class:`~restpg_dspy.optimizers.config.RESTPGConfig`, which documents each).
        **settings: Fields of ``RESTPGConfig`` by name (``rounds=3, samples_per_input=32``); they override ``config``.
    """

    def __init__(self, metric: Metric | None = None, config: RESTPGConfig | None = None, **settings: Any):
        super().__init__()
        if metric is None:
            from restpg_dspy.evals import rouge_l

            metric = rouge_l
        self.metric = metric
        self.config = dataclasses.replace(config, **settings) if config is not None else RESTPGConfig(**settings)

    # --- compile --------------------------------------------------------------------------------------------

    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        teacher: dspy.LM | None = None,
        valset: list[dspy.Example] | None = None,
        sampler: dspy.LM | None = None,
        on_stage: Callable[[dspy.Module, dict[str, Any]], Any] | None = None,
    ) -> dspy.Module:
        """Run the enabled stages and return the student on its best fine-tuned LM.

        Args:
            student: The program; its predictors' LM (or the configured LM) must be fine-tunable.
            trainset: Examples with the program's inputs and ``target_field``.
            teacher: LM that writes hindsight reasoning (default: the student's LM).
            valset: Scored after every stage with ``metric``; the best stage's program is returned.
            sampler: LM whose engine draws the E-step's samples (e.g. a faster engine on the same base weights);
                each round's adapter, trained by the student's provider, is registered with it and sampled under the
                id it returns. Default: the student's LM samples.
            on_stage: Called with each trained stage's program and summary, as soon as the stage is trained (or
                found finished in the run directory), e.g. to score it while its weights are at hand.

        Returns:
            A copy of ``student`` on the chosen LM, with ``restpg_history`` (per-stage summaries) attached.
        """
        job = self._prepare(student, trainset, teacher, sampler)
        history: list[dict[str, Any]] = []
        candidates: list[tuple[dspy.Module, dict[str, Any]]] = []

        def finish(entry: dict[str, Any], lm: dspy.LM | None) -> None:
            if lm is not None:
                with job.run.timed(f"{entry['stage']}.validate"):
                    candidates.append(self._validate(job.program_on(lm), valset, entry, job.run))
                if on_stage is not None:
                    with job.run.timed(f"{entry['stage']}.on_stage"):
                        on_stage(job.program_on(lm), entry)
            history.append(entry)
            self._summary(entry)

        sft_set = self._sft_examples(trainset)
        if len(sft_set) < len(trainset):
            users = sorted({user_of(e) for e in sft_set})
            job.run.write_json("sft/examples.json", {"users": users, "ids": [e.id for e in sft_set]})
            self._log(
                f"SFT stage: {len(sft_set)} of {len(trainset)} training examples ({len(users)} users); the E-steps "
                f"sample all {len(trainset)}"
            )
        # 1. Hindsight reasoning: the teacher explains each real output the SFT stage trains on.
        with job.run.timed("teacher"):
            reasoning = self._hindsight_reasoning(job, sft_set) if self.config.teacher_reasoning else {}
        # 2. SFT on the teacher's reasoning and the real outputs.
        current_lm = job.base
        if self.config.sft:
            rows = self._sft_rows(job, sft_set, reasoning)
            current_lm = self._fine_tune(job, "sft", job.base, rows)
            finish({"stage": "sft", "model": current_lm.model, "rows": len(rows)}, current_lm)
        # 3. EM rounds: sample (E), keep the best (selection), fine-tune on them (M).
        for round_number in range(1, self.config.rounds + 1):
            stage = f"round_{round_number}"
            with job.run.timed(f"{stage}.sample"):
                samples = self._e_step(job, current_lm, trainset, round_number)
            kept = self._select(samples["samples"])
            job.run.write_jsonl(f"{stage}/kept.jsonl", kept)
            entry = {
                "stage": stage,
                **self._round_stats(samples["samples"], kept, trainset),
                **samples["sampled_with"],
            }
            if not kept:
                finish({**entry, "skipped": "no sample passed the selection; the previous model is kept"}, None)
                continue
            rows = [row for sample in kept for row in trace_rows(job.template, sample["trace"], sample["weight"])]
            current_lm = self._fine_tune(job, stage, job.base if self.config.restart_from_base else current_lm, rows)
            entry.update(model=current_lm.model, rows=len(rows))
            finish(entry, current_lm)
            job.run.write_json(f"{stage}/metrics.json", entry)

        job.run.write_json("history.json", history)
        compiled = self._best(candidates, valset) if candidates else job.program_on(current_lm)
        compiled.restpg_history = history
        compiled.restpg_run_dir = str(job.run.path)
        return compiled

    def explore(self, program: dspy.Module, trainset: list[dspy.Example]) -> dict[str, Any]:
        """Draw one E-step from ``program`` as it is, without training, and summarise it as a round's summary does.

        It tells before any M-step whether self-training would have anything to choose on ``trainset``
        (``reward_spread_rate``, ``option_spread_rate``, ``distinct_per_input``). The samples are those round 1 of a
        compile from this program draws (same seeds), kept in ``run_dir`` so an interrupted call resumes.
        """
        base = _single_lm(predictor_lms(program))
        identity = {"explore": self._config(program, base, base, trainset), "model": base.model}
        run = RunDir(self.config.run_dir or tempfile.mkdtemp(prefix="restpg-explore-"), identity)
        samples = self._sample(program, trainset, 1, run)
        stats = self._round_stats(samples, self._select(samples), trainset)
        run.write_json("explore.json", stats)
        return stats

    # --- stages ----------------------------------------------------------------------------------------------

    def _prepare(
        self, student: dspy.Module, trainset: list[dspy.Example], teacher: dspy.LM | None, sampler: dspy.LM | None
    ) -> Job:
        """Check the inputs, set the program's budgets and open the run directory."""
        if not trainset:
            raise UsageError("trainset is empty: REST-PG needs training examples")
        for index, example in enumerate(trainset):
            if not isinstance(example.get(self.config.target_field), str):
                raise UsageError(
                    f"training example {index} ({example.get('id', 'no id')}) has no '{self.config.target_field}'"
                )
        base = _single_lm(predictor_lms(student))
        if not getattr(getattr(base, "provider", None), "finetunable", False):
            raise UsageError(
                f"the student's LM {base.model!r} cannot be fine-tuned (its provider is not finetunable); use "
                "restpg_dspy.lm('local') or an LM with a fine-tuning provider (a vLLM backend samples only: pass "
                "it as compile(..., sampler=...))"
            )
        template = without_lms(student)
        if self.config.reasoning_max_tokens is not None or self.config.response_max_tokens is not None:
            if not hasattr(template, "set_budgets"):
                raise UsageError(
                    f"{type(student).__name__} has no token budgets to set (PersonalizedProgram has them); leave "
                    "reasoning_max_tokens and response_max_tokens unset"
                )
            template.set_budgets(
                self.config.reasoning_max_tokens or template.reasoning_max_tokens,
                self.config.response_max_tokens or template.response_max_tokens,
            )
        names = dict(template.named_predictors())
        reasoning_names = {n for n, p in names.items() if output_field(p) == self.config.reasoning_field}
        if self.config.teacher_reasoning and not reasoning_names:
            raise UsageError(
                f"teacher_reasoning=True needs a predictor with output '{self.config.reasoning_field}' "
                "(e.g. PersonalizedWriter); use SFT or ReSTEM for programs without one"
            )
        if not self.config.teacher_reasoning and self.config.sft and reasoning_names:
            raise UsageError(
                f"SFT without teacher reasoning cannot supervise the reasoning predictor(s) "
                f"{sorted(reasoning_names)}; use a program without one (e.g. RAGWriter) or enable teacher_reasoning"
            )
        teacher = teacher or base
        sampling_lm = self._sampling(sampler, base) if sampler is not None and self.config.rounds else None
        config = self._config(student, base, teacher, trainset)
        if sampler is not None:
            config["sampler_lm"] = sampler.model  # another engine draws other samples for the same seeds
        run = RunDir(self.config.run_dir or tempfile.mkdtemp(prefix="restpg-run-"), config)
        self._log(f"{type(self).__name__} run directory: {run.path}")
        train_kwargs = {"output_dir": str(run.path / "adapters"), **self.config.train_kwargs}
        sft_train_kwargs = {**train_kwargs, **(self.config.sft_train_kwargs or {})}
        return Job(template, base, teacher, reasoning_names, run, train_kwargs, sft_train_kwargs, sampling_lm)

    @staticmethod
    def _best(candidates: list[tuple[dspy.Module, dict[str, Any]]], valset: list[dspy.Example] | None) -> dspy.Module:
        """The best validated stage's program (the last stage's without a valset, or when nothing was scored)."""
        scored = [c for c in candidates if c[1].get("val_score") is not None] if valset else []
        return max(scored, key=lambda c: c[1]["val_score"])[0] if scored else candidates[-1][0]

    # --- validation, helpers ------------------------------------------------------------------------------

    def _validate(
        self, program: dspy.Module, valset: list[dspy.Example] | None, entry: dict[str, Any], run: RunDir
    ) -> tuple[dspy.Module, dict[str, Any]]:
        if valset:

            def score(example: dspy.Example) -> float | None:
                try:
                    value = float(self.metric(example, program(**example.inputs().toDict())))
                except Exception as err:  # recorded and counted, never a silent zero
                    logger.warning(
                        "validation of %s failed on %s: %s: %s",
                        entry["stage"],
                        example.get("id"),
                        type(err).__name__,
                        err,
                    )
                    return None
                return value if math.isfinite(value) else None

            scores = self._parallel(score, valset, f"{entry['stage']}: validation")
            scored = [value for value in scores if value is not None]
            entry["val_score"] = round(statistics.fmean(scored), 4) if scored else None
            entry["val_failed"] = len(scores) - len(scored)
        return program, entry

    def _parallel(
        self,
        function: Callable[[Any], Any],
        items: list[Any],
        description: str,
        on_result: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        return run_concurrently(
            function,
            items,
            num_threads=self.config.num_threads,
            description=description,
            progress=self.config.verbose,
            on_result=on_result,
        )

    def _config(self, student: dspy.Module, base: dspy.LM, teacher: dspy.LM, trainset: list[dspy.Example]) -> dict:
        data = hashlib.sha256(
            json.dumps([[str(e.get("id")), e.get(self.config.target_field)] for e in trainset]).encode()
        ).hexdigest()[:16]
        return {
            **self.config.identity(),
            "metric": metric_identity(self.metric),
            "student": {
                "program": type(student).__name__,
                "describe": student.describe() if hasattr(student, "describe") else None,
                "predictors": {n: p.signature.instructions for n, p in student.named_predictors()},
            },
            "student_lm": base.model,
            # A run without a reasoning stage never asks the teacher: it is no part of what the run computes.
            "teacher_lm": teacher.model if self.config.teacher_reasoning else None,
            "trainset": data,
        }

    def _log(self, message: str) -> None:
        logger.info(message)
        if self.config.verbose:
            tqdm.write(message)

    def _summary(self, entry: dict[str, Any]) -> None:
        self._log(f"[{entry['stage']}] " + "  ".join(f"{k}={entry[k]}" for k in STAGE_FIELDS[2:] if k in entry))


class SFT(RESTPG):
    """Supervised fine-tuning on the users' real outputs, no reasoning, no self-training (use with ``RAGWriter``)."""

    def __init__(self, metric: Metric | None = None, **kwargs: Any):
        super().__init__(metric, **{**kwargs, "teacher_reasoning": False, "rounds": 0})


class SFTWithReasoning(RESTPG):
    """Stages 1–2: SFT on teacher hindsight reasoning + real outputs, no self-training (``PersonalizedWriter``)."""

    def __init__(self, metric: Metric | None = None, **kwargs: Any):
        super().__init__(metric, **{**kwargs, "rounds": 0})


class ReSTEM(RESTPG):
    """SFT then reward-filtered self-training without reasoning (Singh et al. 2024; use with ``RAGWriter``)."""

    def __init__(self, metric: Metric | None = None, **kwargs: Any):
        super().__init__(metric, **{**kwargs, "teacher_reasoning": False})


def _single_lm(lms: dict[str, dspy.LM]) -> dspy.LM:
    distinct = {lm.model for lm in lms.values()}
    if len(distinct) > 1:
        raise UsageError(f"REST-PG trains one student LM shared by all predictors; these use several: {lms}")
    return next(iter(lms.values()))


__all__ = ["RESTPG", "SFT", "ReSTEM", "SFTWithReasoning", "Trace", "stage_lm"]
