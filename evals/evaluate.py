"""Evaluation runs whose every prediction and metric value is cached on disk.

Cache keys are a fingerprint of the program (its LMs' model ids, which name adapter hashes, their generation
settings, every predictor's signature, instructions and demos, and the program's own settings such as retrieval),
the example's id and the metric's identity (:func:`~restpg_dspy.evals.metrics.metric_identity`: a judge's model,
settings, rubric and scoring mode, not just its name). A second identical run reads everything from disk; an
interrupted run resumes; changing the model, a prompt or a judge recomputes only what depends on it. Failures are
recorded in the result but never cached: the next run tries them again.

Example:
    >>> from restpg_dspy.evals import evaluate, rouge_l
    >>> result = evaluate(program, testset, metrics=[rouge_l], cache_dir="runs/eval-cache")  # doctest: +SKIP
    >>> result.summary()["rouge_l"]  # doctest: +SKIP
    {'mean': 0.31, 'ci_low': 0.28, 'ci_high': 0.34, 'n': 32, 'errors': 0, 'missing_field': 0}
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import numpy as np

from restpg_dspy.concurrency import run_concurrently
from restpg_dspy.errors import UsageError
from restpg_dspy.evals.metrics import metric_key, metric_name
from restpg_dspy.files import write_atomic
from restpg_dspy.optimizers.traces import predictor_lms, with_lms, without_lms
from restpg_dspy.serving.backends import lm_identity

Metric = Callable[..., float]
TRUNCATION = "truncation_rate"


def program_fingerprint(program: dspy.Module) -> str:
    """A hash of everything that decides a program's outputs: LMs (with adapter hashes), prompts, demos, settings."""
    state = {
        "program": type(program).__qualname__,
        "settings": program.describe() if hasattr(program, "describe") else None,
        "default_lm": lm_identity(dspy.settings.lm),
        "predictors": {
            name: {
                "signature": str(p.signature),
                "instructions": p.signature.instructions,
                "fields": {k: f.json_schema_extra for k, f in p.signature.fields.items()},
                "demos": [d.toDict() if hasattr(d, "toDict") else d for d in p.demos],
                "lm": lm_identity(p.lm),
            }
            for name, p in program.named_predictors()
        },
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def example_id(example: dspy.Example) -> str:
    """The example's ``id``, else a hash of its inputs."""
    if example.get("id") is not None:
        return str(example["id"])
    return hashlib.sha256(json.dumps(example.inputs().toDict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def bootstrap_interval(values: list[float], *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    samples = np.random.default_rng(seed).choice(np.asarray(values), size=(draws, len(values)), replace=True)
    means = samples.mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass
class EvaluationResult:
    """Per-example rows and their aggregates.

    Attributes:
        program_fingerprint: The fingerprint the cache keys used.
        rows: One dict per example: ``id``, ``user_id``, ``response``, the metric values, ``errors`` (``{"program"
            or metric name: "ExceptionType: message"}``).
        metrics: Metric names, in order.
        cached_predictions: How many predictions came from the cache.
        cached_scores: How many metric values came from the cache.
        recomputed_corrupt: Cache entries that were unreadable, or cached failures, and were computed again.
    """

    program_fingerprint: str
    rows: list[dict[str, Any]]
    metrics: list[str]
    cached_predictions: int = 0
    cached_scores: int = 0
    recomputed_corrupt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: mean, 95% bootstrap interval, n scored, failed examples (a program failure counts for every
        metric) with their exception types in ``error_kinds``, and predictions missing the response."""
        summary = {}
        for name in self.metrics:
            values = [r[name] for r in self.rows if isinstance(r.get(name), float)]
            low, high = bootstrap_interval(values)
            failures = [e for r in self.rows for stage, e in r.get("errors", {}).items() if stage in ("program", name)]
            summary[name] = {
                "mean": float(np.mean(values)) if values else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n": len(values),
                "errors": len(failures),
                "error_kinds": dict(Counter(error_kind(e) for e in failures)),
                "missing_field": sum(1 for r in self.rows if r.get("missing_field")),
            }
        known = [float(r["truncated"]) for r in self.rows if isinstance(r.get("truncated"), bool)]
        if known:  # the share of predictions whose generation stopped at its token budget
            low, high = bootstrap_interval(known)
            summary[TRUNCATION] = {"mean": float(np.mean(known)), "ci_low": low, "ci_high": high, "n": len(known)}
        return summary

    @property
    def failed(self) -> int:
        """Examples with any failure (program or metric); a re-run retries exactly these."""
        return sum(1 for r in self.rows if r.get("errors"))

    def to_jsonl(self, path: str | Path) -> None:
        write_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in self.rows))

    def to_csv(self, path: str | Path) -> None:
        columns = ["id", "user_id", *self.metrics, "response", "errors"]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({**row, "errors": json.dumps(row.get("errors", {}))})
        write_atomic(path, text.getvalue())


def error_kind(error: str) -> str:
    """The exception type of a recorded ``"ExceptionType: message"`` error."""
    return error.partition(":")[0]


class _Store:
    """diskcache entries with a checksum: a corrupted or unreadable entry is dropped and recomputed."""

    def __init__(self, directory: str | Path | None):
        import diskcache

        self.cache = diskcache.Cache(str(directory)) if directory is not None else None
        self.corrupt = 0

    def get(self, key: str) -> Any:
        if self.cache is None:
            return None
        try:
            entry = self.cache.get(key)
            if entry is None:
                return None
            payload, digest = entry
            if hashlib.sha256(payload.encode()).hexdigest() != digest:
                raise ValueError("checksum mismatch")
            return json.loads(payload)
        except Exception:
            self.corrupt += 1
            self.cache.delete(key)
            return None

    def set(self, key: str, value: Any) -> None:
        if self.cache is not None:
            payload = json.dumps(value, default=str)
            self.cache.set(key, (payload, hashlib.sha256(payload.encode()).hexdigest()))


def evaluate(
    program: dspy.Module,
    dataset: list[dspy.Example],
    metrics: list[Metric],
    *,
    cache_dir: str | Path | None = None,
    num_threads: int = 8,
    progress: bool = True,
    output_field: str = "response",
    cache_failures: bool = False,
) -> EvaluationResult:
    """Run ``program`` on ``dataset`` and score it with every metric, caching predictions and scores on disk.

    A program failure or a metric exception on one example is recorded for that example (with the error) and the
    run goes on; it is not cached, so the next run retries it (a rate limit or a timeout is not remembered). A
    prediction without ``output_field`` scores as a failure counted under ``missing_field``.

    Args:
        program: The program to evaluate.
        dataset: Examples with ids (``example.id``; otherwise their inputs are hashed).
        metrics: DSPy metrics ``metric(example, prediction, trace=None) -> float``.
        cache_dir: Folder of the disk cache (``None``: no caching).
        num_threads: Concurrent program runs.
        progress: Show a progress bar.
        output_field: The prediction field metrics read.
        cache_failures: Also cache failures, for programs and metrics that fail deterministically (opt-in).

    Raises:
        ValueError: two metrics report under the same name (e.g. two ``LLMJudge``: give them ``name=``).
    """
    store = _Store(cache_dir)
    fingerprint = program_fingerprint(program)
    names = [metric_name(m) for m in metrics]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UsageError(f"several metrics report under the name(s) {duplicated}: give each a distinct name")
    keys = [metric_key(m) for m in metrics]
    counts = {"predictions": 0, "scores": 0}
    counts_lock = threading.Lock()

    def cached(key: str, kind: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored result for ``key``, else ``compute()``'s (an exception becomes an ``error``, not stored)."""
        result = store.get(key)
        if result is not None and ("error" not in result or cache_failures):
            with counts_lock:
                counts[kind] += 1
            return result
        if result is not None:  # a cached failure (an older version, or cache_failures=True): tried again
            with counts_lock:
                store.corrupt += 1
        try:
            result = json.loads(json.dumps(compute(), default=str))
        except Exception as err:
            result = {"error": f"{type(err).__name__}: {err}"}
            if not cache_failures:
                return result
        store.set(key, result)
        return result

    try:  # each example runs on copies of the program's LMs, whose histories say how its generations finished
        lms, template = predictor_lms(program) or None, without_lms(program)
    except UsageError:  # predictors without an LM: the program brings its own
        lms, template = None, None

    def predict(example: dspy.Example) -> dict[str, Any]:
        if lms is None:
            prediction, truncated = program(**example.inputs().toDict()), None
        else:
            copies = {name: lm.copy() for name, lm in lms.items()}
            prediction = with_lms(template, copies.__getitem__)(**example.inputs().toDict())
            truncated = any(
                getattr(entry.get("response"), "finish_reason", None) == "length"
                for lm in copies.values()
                for entry in lm.history
            )
        return {"fields": {k: v for k, v in prediction.items() if k != "retrieved"}, "truncated": truncated}

    def score(metric: Metric, example: dspy.Example, prediction: dspy.Prediction) -> dict[str, Any]:
        value = float(metric(example, prediction))
        if not math.isfinite(value):
            raise ValueError(f"non-finite score {value}")
        return {"value": value}

    def one(example: dspy.Example) -> dict[str, Any]:
        key = example_id(example)
        row: dict[str, Any] = {"id": key, "user_id": example.get("user_id"), "errors": {}}
        outputs = cached(f"prediction:{fingerprint}:{key}", "predictions", lambda: predict(example))
        if "error" in outputs:
            row["errors"]["program"] = outputs["error"]
            return row
        fields = outputs["fields"]
        row["response"] = fields.get(output_field)
        row["truncated"] = outputs.get("truncated")  # None: not known (a cached prediction of an older version)
        if "personal" in fields:  # a routed program: whether the user's own adapter served the prediction
            row["personal"] = fields["personal"]
        if not isinstance(fields.get(output_field), str):
            row["missing_field"] = True
            for name in names:
                row[name] = 0.0
            return row
        prediction = dspy.Prediction(**fields)
        for metric, name, identity in zip(metrics, names, keys, strict=True):
            result = cached(
                f"score:{fingerprint}:{key}:{identity}", "scores", lambda m=metric: score(m, example, prediction)
            )
            if "value" in result:
                row[name] = result["value"]
            else:
                row["errors"][name] = result["error"]
        return row

    rows = run_concurrently(one, dataset, num_threads=num_threads, description="evaluating", progress=progress)
    return EvaluationResult(
        program_fingerprint=fingerprint,
        rows=rows,
        metrics=names,
        cached_predictions=counts["predictions"],
        cached_scores=counts["scores"],
        recomputed_corrupt=store.corrupt,
    )
