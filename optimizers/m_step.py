"""REST-PG's M-step (and SFT): fine-tune the student on the kept traces, or restore the model a finished stage
trained."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.optimizers.config import RESTPGConfig
from restpg_dspy.serving import serving_engine, split_decoding, with_decoding

if TYPE_CHECKING:
    from restpg_dspy.optimizers.restpg import Job


class MStep:
    """The M-step and the SFT stage's training (a part of :class:`~restpg_dspy.optimizers.RESTPG`)."""

    config: RESTPGConfig
    metric: Callable[..., float]

    def _fine_tune(self, job: Job, stage: str, start: dspy.LM, rows: list[dict]) -> dspy.LM:
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

    def _train(self, job: Job, stage: str, start: dspy.LM, rows: list[dict]) -> tuple[dspy.LM, dict[str, Any]]:
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
