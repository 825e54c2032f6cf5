"""REST-PG's first two stages' data: the teacher's hindsight notes on each training example, and the SFT rows made
from them and the real outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dspy

from restpg_dspy.optimizers.config import RESTPGConfig
from restpg_dspy.optimizers.traces import (
    adapter_of,
    forced,
    trace_rows,
)
from restpg_dspy.programs.signatures import HindsightReasoning

if TYPE_CHECKING:
    from restpg_dspy.optimizers.restpg import Job


class HindsightStage:
    """The hindsight-reasoning stage, and the SFT stage's examples and rows (a part of
    :class:`~restpg_dspy.optimizers.RESTPG`)."""

    config: RESTPGConfig
    metric: Callable[..., float]

    def _sft_examples(self, trainset: list[dspy.Example]) -> list[dspy.Example]:
        """The training examples of the SFT stage: whole users, a seeded ``sft_fraction`` of them (all without it)."""
        if self.config.sft_fraction is None:
            return trainset
        users = sorted(
            {user_of(e) for e in trainset},
            key=lambda user: hashlib.sha256(f"{self.config.seed}:{user}".encode()).digest(),
        )
        chosen = set(users[: max(1, round(self.config.sft_fraction * len(users)))])
        return [e for e in trainset if user_of(e) in chosen]

    def _sft_rows(self, job: Job, trainset: list[dspy.Example], reasoning: dict[Any, str]) -> list[dict[str, Any]]:
        """The program's own prompts with the teacher's notes and the real output as the targets."""
        rows = []
        for example in trainset:
            if self.config.teacher_reasoning and example.id not in reasoning:
                continue
            gold = self._gold(example, reasoning, job.reasoning_names)
            _, trace = forced(job.template, example.inputs().toDict(), gold)
            rows += trace_rows(job.template, trace)
        return rows

    def _hindsight_reasoning(self, job: Job, trainset: list[dspy.Example]) -> dict[str, str]:
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


def user_of(example: dspy.Example) -> str:
    return str(example.get("user_id", example.id))
