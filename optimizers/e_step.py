"""REST-PG's E-step: sample every training input several times with the current model, score each response by
its similarity to the real output, keep the best traces per input, and summarise the round."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dspy

from restpg_dspy.evals.loops import loops
from restpg_dspy.optimizers.config import RESTPGConfig
from restpg_dspy.optimizers.run_dir import RunDir
from restpg_dspy.optimizers.traces import (
    output_field,
    predictor_lms,
    record,
    with_lms,
    without_lms,
)
from restpg_dspy.serving import serving_engine
from restpg_dspy.serving.transfer import served_by

if TYPE_CHECKING:
    from restpg_dspy.optimizers.restpg import Job


class EStep:
    """The E-step: sampling, selection and the round's summary (a part of :class:`~restpg_dspy.optimizers.RESTPG`)."""

    config: RESTPGConfig
    metric: Callable[..., float]

    def _e_step(self, job: Job, current_lm: dspy.LM, trainset: list[dspy.Example], round_number: int) -> dict[str, Any]:
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
        served_by(base, sampler)  # refuses, before any stage, a sampler on other base weights

        def sampling_lm(lm: dspy.LM) -> dspy.LM:
            return served_by(lm, sampler)

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
