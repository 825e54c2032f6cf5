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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from restpg_dspy.concurrency import run_concurrently
from restpg_dspy.errors import UsageError
from restpg_dspy.evals.loops import loops
from restpg_dspy.evals.metrics import metric_identity
from restpg_dspy.optimizers.config import RESTPGConfig
from restpg_dspy.optimizers.run_dir import RunDir
from restpg_dspy.optimizers.traces import (
    Trace,
    adapter_of,
    forced,
    output_field,
    predictor_lms,
    record,
    trace_rows,
    with_lms,
    without_lms,
)
from restpg_dspy.programs.signatures import HindsightReasoning
from restpg_dspy.serving import serving_engine, split_decoding, with_decoding

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
class _Job:
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


class RESTPG(Teleprompter):
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
            users = sorted({_user(e) for e in sft_set})
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
    ) -> _Job:
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
        return _Job(template, base, teacher, reasoning_names, run, train_kwargs, sft_train_kwargs, sampling_lm)

    def _sft_examples(self, trainset: list[dspy.Example]) -> list[dspy.Example]:
        """The training examples of the SFT stage: whole users, a seeded ``sft_fraction`` of them (all without it)."""
        if self.config.sft_fraction is None:
            return trainset
        users = sorted(
            {_user(e) for e in trainset},
            key=lambda user: hashlib.sha256(f"{self.config.seed}:{user}".encode()).digest(),
        )
        chosen = set(users[: max(1, round(self.config.sft_fraction * len(users)))])
        return [e for e in trainset if _user(e) in chosen]

    def _sft_rows(self, job: _Job, trainset: list[dspy.Example], reasoning: dict[Any, str]) -> list[dict[str, Any]]:
        """The program's own prompts with the teacher's notes and the real output as the targets."""
        rows = []
        for example in trainset:
            if self.config.teacher_reasoning and example.id not in reasoning:
                continue
            gold = self._gold(example, reasoning, job.reasoning_names)
            _, trace = forced(job.template, example.inputs().toDict(), gold)
            rows += trace_rows(job.template, trace)
        return rows

    def _e_step(
        self, job: _Job, current_lm: dspy.LM, trainset: list[dspy.Example], round_number: int
    ) -> dict[str, Any]:
        """Sample every input with the current model (through the sampler, if any); stop if every sample failed."""
        round_lm = job.sampling_lm(current_lm) if job.sampling_lm else current_lm
        samples = self._sample(job.program_on(round_lm), trainset, round_number, job.run)
        sampled_with = {"sampled_with": _release(round_lm)} if job.sampling_lm else {}
        failed = [sample for sample in samples if sample.get("reward") is None]
        if samples and len(failed) == len(samples):
            raise RuntimeError(
                f"every sample of round_{round_number} failed (first: {failed[0].get('error')}); the run directory "
                f"{job.run.path} keeps every finished stage: run the compile again to resume once the cause is fixed"
            )
        return {"samples": samples, "sampled_with": sampled_with}

    @staticmethod
    def _best(candidates: list[tuple[dspy.Module, dict[str, Any]]], valset: list[dspy.Example] | None) -> dspy.Module:
        """The best validated stage's program (the last stage's without a valset, or when nothing was scored)."""
        scored = [c for c in candidates if c[1].get("val_score") is not None] if valset else []
        return max(scored, key=lambda c: c[1]["val_score"])[0] if scored else candidates[-1][0]

    # --- stage 1: hindsight reasoning --------------------------------------------------------------------------

    def _hindsight_reasoning(self, job: _Job, trainset: list[dspy.Example]) -> dict[str, str]:
        """The teacher's notes on each training example (resumed from the run directory)."""
        template, teacher, run, reasoning_names = job.template, job.teacher, job.run, job.reasoning_names
        # A failure is retried by the next run, unless the SFT stage was already trained without that example.
        final = run.read_json("sft/model.json") is not None
        done = {row["id"]: row for row in run.read_jsonl("teacher_reasoning.jsonl") if final or "reasoning" in row}
        todo = [example for example in trainset if example.id not in done]
        adapter = adapter_of(template)
        hindsight = dspy.Predict(HindsightReasoning)
        hindsight.lm = teacher
        # The teacher's notes become the reasoning step's target: they get the same budget.
        budget = getattr(template, "reasoning_max_tokens", None)

        def explain(example: dspy.Example) -> dict[str, Any]:
            errors = []
            for attempt in range(self.config.teacher_retries + 1):
                try:

                    def output_for(name: str, inputs: dict[str, Any], attempt: int = attempt) -> str:
                        if name not in reasoning_names:
                            return example[self.config.target_field]
                        with dspy.context(adapter=adapter):
                            notes = hindsight(
                                request=inputs.get("request", ""),
                                profile=inputs.get("profile", ""),
                                expected_output=example[self.config.target_field],
                                config={
                                    **({"rollout_id": attempt} if attempt else {}),
                                    **({"max_tokens": budget} if budget else {}),
                                },
                            ).reasoning
                        if not notes or not notes.strip():
                            raise ValueError("the teacher returned empty reasoning")
                        return notes.strip()

                    _, trace = forced(template, example.inputs().toDict(), output_for)
                    field = self.config.reasoning_field
                    notes = next(c["outputs"][field] for c in trace if field in c["outputs"])
                    return {"id": example.id, "reasoning": notes, "attempts": attempt + 1}
                except Exception as err:  # retried, then recorded and skipped: one bad example is not fatal
                    errors.append(f"{type(err).__name__}: {err}")
            return {"id": example.id, "error": errors[-1], "attempts": len(errors)}

        for row in self._parallel(
            explain, todo, "teacher reasoning", lambda row: run.append_jsonl("teacher_reasoning.jsonl", row)
        ):
            done[row["id"]] = row
        reasoning = {i: row["reasoning"] for i, row in done.items() if "reasoning" in row}
        failed = len(trainset) - len(reasoning)
        self._log(
            f"teacher reasoning: {len(reasoning)} examples, {failed} skipped after "
            f"{self.config.teacher_retries + 1} tries"
        )
        if not reasoning:
            raise RuntimeError(
                f"the teacher produced no reasoning for any example; see {run.path / 'teacher_reasoning.jsonl'}"
            )
        return reasoning

    def _gold(self, example: dspy.Example, reasoning: dict[str, str], reasoning_names: set[str]):
        """Forced outputs: the teacher's notes for reasoning predictors, the real output for the others."""

        def output_for(name: str, inputs: dict[str, Any]) -> str:
            return reasoning[example.id] if name in reasoning_names else example[self.config.target_field]

        return output_for

    # --- stage 3: E-step ------------------------------------------------------------------------------------

    def _sample(self, program: dspy.Module, trainset: list[dspy.Example], round_number: int, run: RunDir) -> list[dict]:
        name = f"round_{round_number}/samples.jsonl"
        # A failed sample is drawn again by the next run, unless this round's M-step was already trained without it.
        final = run.read_json(f"round_{round_number}/model.json") is not None
        done = {
            (row["id"], row["index"]): row for row in run.read_jsonl(name) if final or row.get("reward") is not None
        }
        template = without_lms(program)
        lms = predictor_lms(program)
        model = ", ".join(sorted({lm.model for lm in lms.values()}))
        steps = {
            name: "reasoning" if output_field(p) == self.config.reasoning_field else "response"
            for name, p in template.named_predictors()
        }
        jobs = [(e, i) for e in trainset for i in range(self.config.samples_per_input) if (e.id, i) not in done]

        def draw(job: tuple[dspy.Example, int]) -> dict[str, Any]:
            example, index = job
            seed = _seed(self.config.seed, example.id, round_number, index)
            copies = {
                n: lm.copy(temperature=self.config.temperature, top_p=self.config.top_p, seed=seed, rollout_id=seed)
                for n, lm in lms.items()
            }
            row: dict[str, Any] = {"id": example.id, "index": index, "seed": seed, "model": model}
            try:
                prediction, trace = record(with_lms(template, copies.__getitem__), example.inputs().toDict())
            except Exception as err:
                return {**row, "error": f"program failed: {type(err).__name__}: {err}"}
            row["trace"] = trace
            truncated = {
                steps[name]
                for name, lm in copies.items()
                for entry in lm.history
                if getattr(entry.get("response"), "finish_reason", None) == "length"
            }
            row["truncated"] = bool(truncated)
            row["truncated_steps"] = sorted(truncated)
            if "reasoning" in steps.values():
                # Read from the response: a call served from DSPy's cache reports no usage of its own.
                row["reasoning_tokens"] = sum(
                    getattr(getattr(entry.get("response"), "usage", None), "output_tokens", None) or 0
                    for name, lm in copies.items()
                    if steps[name] == "reasoning"
                    for entry in lm.history
                )
            try:
                row["reward"] = float(self.metric(example, prediction))
                if not math.isfinite(row["reward"]):
                    raise ValueError(f"non-finite reward {row['reward']}")
            except Exception as err:
                row["reward"] = None
                row["error"] = f"metric failed: {type(err).__name__}: {err}"
            return row

        for row in self._parallel(
            draw, jobs, f"round {round_number}: sampling", lambda row: run.append_jsonl(name, row)
        ):
            done[(row["id"], row["index"])] = row
        return [done[key] for key in sorted(done, key=lambda k: (str(k[0]), k[1]))]

    @staticmethod
    def _sampling(sampler: dspy.LM, base: dspy.LM) -> Callable[[dspy.LM], dspy.LM]:
        """How to sample with a student LM through ``sampler``: its adapter, registered with the sampler's engine."""
        engine, trainer = serving_engine(sampler), serving_engine(base)
        if engine is None:
            raise UsageError(
                f"the sampler {sampler.model!r} cannot serve the adapters REST-PG trains; use a local engine "
                "(restpg_dspy.lm('local:...')) on the student's base weights"
            )
        if trainer is None or engine.weights_id != trainer.weights_id:
            raise UsageError(
                f"the sampler serves {engine.base_id!r} but the student trains {base.model!r}: they must share "
                "the same base weights"
            )

        def sampling_lm(lm: dspy.LM) -> dspy.LM:
            adapter = trainer.adapter_path(lm.model)
            served = engine.register_adapter(adapter) if adapter else engine.base_id
            return sampler.copy(model=with_decoding(served, **split_decoding(sampler.model)[1]))

        return sampling_lm

    def _select(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_input: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sample in samples:
            if sample.get("reward") is not None:
                by_input[sample["id"]].append({**sample, "score": self._selection_score(sample)})
        kept = []
        for rows in by_input.values():
            rows.sort(key=lambda s: (-s["score"], s["index"]))
            limit = self.config.max_per_input
            if self.config.top_fraction is not None:
                limit = min(limit, max(1, math.floor(self.config.top_fraction * len(rows))))
            seen: set[str] = set()
            chosen = []
            for sample in rows:
                if self.config.threshold is not None and sample["score"] < self.config.threshold:
                    break
                key = _trace_key(sample)
                if key in seen:  # identical traces would only over-weight one answer
                    continue
                seen.add(key)
                chosen.append(sample)
                if len(chosen) == limit:
                    break
            kept += chosen
        mean = statistics.fmean(s["score"] for s in kept) if kept else 0.0
        for sample in kept:
            sample["weight"] = sample["score"] / mean if self.config.reward_weighted and mean > 0 else 1.0
        return kept

    def _selection_score(self, sample: dict[str, Any]) -> float:
        """The reward, lowered for reasoning longer than ``reasoning_length_target`` when a penalty is set."""
        tokens = sample.get("reasoning_tokens")
        if not self.config.reasoning_length_penalty or not tokens or tokens <= self.config.reasoning_length_target:
            return sample["reward"]
        excess = (tokens - self.config.reasoning_length_target) / self.config.reasoning_length_target
        return sample["reward"] - self.config.reasoning_length_penalty * excess

    def _round_stats(
        self, samples: list[dict[str, Any]], kept: list[dict[str, Any]], trainset: list[dspy.Example]
    ) -> dict[str, Any]:
        rewards = sorted(s["reward"] for s in samples if s.get("reward") is not None)
        inputs = {s["id"] for s in samples}
        kept_inputs = {s["id"] for s in kept}

        def quantile(q: float) -> float:
            return rewards[min(len(rewards) - 1, int(q * len(rewards)))] if rewards else float("nan")

        def rate(flag: Callable[[dict[str, Any]], bool]) -> float:
            return round(sum(1 for s in samples if flag(s)) / len(samples), 4) if samples else 0.0

        lengths = [s["reasoning_tokens"] for s in samples if s.get("reasoning_tokens") is not None]
        traces: dict[str, set[str]] = defaultdict(set)
        input_rewards: dict[str, set[float]] = defaultdict(set)
        for sample in samples:
            if sample.get("reward") is not None:
                traces[sample["id"]].add(_trace_key(sample))
                input_rewards[sample["id"]].add(sample["reward"])
        spread = sum(1 for values in input_rewards.values() if len(values) > 1)
        option_spread = _option_spread_rate(samples, trainset)

        return {
            "samples": len(samples),
            "failed": sum(1 for s in samples if s.get("reward") is None),
            "reward_mean": round(statistics.fmean(rewards), 4) if rewards else None,
            "reward_median": round(quantile(0.5), 4) if rewards else None,
            "reward_p90": round(quantile(0.9), 4) if rewards else None,
            "kept": len(kept),
            "keep_rate": round(len(kept) / len(rewards), 4) if rewards else 0.0,
            "inputs_without_kept": len(inputs - kept_inputs),
            # 1.0 means every draw of an input was the same trace: nothing for the selection to choose from.
            "distinct_per_input": round(statistics.fmean(map(len, traces.values())), 2) if traces else None,
            # The inputs whose draws earned different rewards: the only ones where the selection prefers a trace.
            "reward_spread_rate": round(spread / len(input_rewards), 4) if input_rewards else None,
            # Where examples offer options: the inputs whose draws chose differently (ROUGE-L wording alone can
            # spread the rewards; only a different choice lets the selection prefer the right one).
            **({"option_spread_rate": option_spread} if option_spread is not None else {}),
            "truncation_rate": rate(lambda s: s.get("truncated")),
            # Responses that repeat a clause (restpg_dspy.evals.loops): a high reward is no excuse for a loop.
            "loop_rate": rate(lambda s: "trace" in s and loops(_final_output(s))),
            "reasoning_truncation_rate": rate(lambda s: "reasoning" in s.get("truncated_steps", ())),
            "response_truncation_rate": rate(lambda s: "response" in s.get("truncated_steps", ())),
            **({"reasoning_tokens_mean": round(statistics.fmean(lengths), 1)} if lengths else {}),
        }

    # --- M-step ---------------------------------------------------------------------------------------------

    def _fine_tune(self, job: _Job, stage: str, start: dspy.LM, rows: list[dict]) -> dspy.LM:
        """The M-step (and SFT): fine-tune ``start`` on ``rows``, or restore the model a finished run trained."""
        run, base = job.run, job.base
        done = run.read_json(f"{stage}/model.json")
        if done is None:
            run.write_jsonl(f"{stage}/rows.jsonl", rows)
            tuned, log = self._train(job, stage, start, rows)
            record = {"model": tuned.model, "adapter": log.get("adapter"), "training": log}
            run.write_json(f"{stage}/model.json", record)
            return tuned
        adapter, engine = done.get("adapter"), serving_engine(base)
        if adapter and not Path(adapter, "adapter_config.json").exists() and engine is not None:
            # The run directory moved to a machine without its adapters: the stage is trained again on the rows it
            # recorded, and only if a request needs its weights (a resumed run whose later stages and evaluations
            # are recorded trains nothing). Training is deterministic: the same rows and settings, the same adapter.
            def build() -> str:
                self._log(f"{stage}: the adapter {adapter} is missing; training it again from {stage}/rows.jsonl")
                return self._train(job, stage, start, run.read_jsonl(f"{stage}/rows.jsonl"))[1]["adapter"]

            engine.defer_adapter(done["model"], build)
        return _restore_lm(base, done)

    def _train(self, job: _Job, stage: str, start: dspy.LM, rows: list[dict]) -> tuple[dspy.LM, dict[str, Any]]:
        kwargs = dict(job.sft_train_kwargs if stage == "sft" else job.train_kwargs)
        if start is not job.base:
            kwargs["start_from"] = "adapter"
        self._log(f"{stage}: fine-tuning {start.model} on {len(rows)} rows")
        # An adapter trained again on demand counts here, and also in the part whose request needed it.
        with job.run.timed(f"{stage}.train"):
            training = start.finetune(train_data=rows, train_data_format="chat", train_kwargs=kwargs)
            tuned = training.result()
        if isinstance(tuned, Exception):  # providers that hand the error back instead of raising it
            raise tuned
        return tuned, getattr(training, "log", {}) or {}

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


def _trace_key(sample: dict[str, Any]) -> str:
    """What a sampled trace wrote, at every step: equal keys are the same trace."""
    return json.dumps([call["outputs"] for call in sample["trace"]], sort_keys=True)


def _option_spread_rate(samples: list[dict[str, Any]], trainset: list[dspy.Example]) -> float | None:
    """The share of inputs whose drawn responses (each trace's last step) name different options (None: the
    examples offer no options)."""
    from restpg_dspy.evals.choice import named_options

    options = {e.id: e.get("options") for e in trainset if isinstance(e.get("options"), list)}
    choices: dict[Any, set[tuple[str, ...]]] = defaultdict(set)
    for sample in samples:
        if sample.get("reward") is None or sample["id"] not in options:
            continue
        response = _final_output(sample)
        choices[sample["id"]].add(tuple(named_options(response, options[sample["id"]])))
    if not choices:
        return None
    return round(sum(1 for named in choices.values() if len(named) > 1) / len(choices), 4)


def _final_output(sample: dict[str, Any]) -> str:
    """A sample's response: the output of its trace's last step."""
    (response,) = sample["trace"][-1]["outputs"].values()
    return response


def _user(example: dspy.Example) -> str:
    return str(example.get("user_id", example.id))


def _single_lm(lms: dict[str, dspy.LM]) -> dspy.LM:
    distinct = {lm.model for lm in lms.values()}
    if len(distinct) > 1:
        raise UsageError(f"REST-PG trains one student LM shared by all predictors; these use several: {lms}")
    return next(iter(lms.values()))


def stage_lm(base: dspy.LM, run_dir: str | Path, stage: str) -> dspy.LM:
    """The LM that a finished stage (``"sft"``, ``"round_1"``, ...) of a compile run in ``run_dir`` trained on
    ``base``'s weights.

    Raises:
        UsageError: the stage has not finished in that run directory.
    """
    path = Path(run_dir) / stage / "model.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no finished stage {stage!r} ({path} is missing)")
    return _restore_lm(base, json.loads(path.read_text()))


def _restore_lm(base: dspy.LM, done: dict[str, Any]) -> dspy.LM:
    engine = serving_engine(base)
    if engine is not None and done.get("adapter") and not engine.is_deferred(done["model"]):
        # The id is the adapter's content hash as computed today (a run written by an older hash stays servable).
        served = engine.register_adapter(done["adapter"])
        return base.copy(model=with_decoding(served, **split_decoding(base.model)[1]))
    return base.copy(model=done["model"])


def _release(lm: dspy.LM) -> dict[str, Any]:
    """Unload a round's adapter from the sampler once its samples are drawn; say what it was served as."""
    engine = serving_engine(lm)
    served_as = engine.served_name(lm.model)
    if served_as is not None:
        engine.unload_adapter(lm.model)
    return {"model": lm.model, "served_as": served_as}


def _seed(seed: int, example_id: Any, round_number: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{example_id}:{round_number}:{index}".encode()).hexdigest()
    return int(digest[:8], 16)


__all__ = ["RESTPG", "SFT", "ReSTEM", "SFTWithReasoning", "Trace", "stage_lm"]
