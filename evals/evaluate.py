"""Evaluation runs whose every prediction and metric value is cached on disk.

Cache keys are a fingerprint of the program (its LMs' model ids, which name adapter hashes, their generation
settings, every predictor's signature, instructions and demos, and the program's own settings such as retrieval),
the example's id and the metric's name. A second identical run reads everything from disk; an interrupted run
resumes; changing the model or a prompt recomputes only what depends on it.

Example:
    >>> from restpg_dspy.evals import evaluate, rouge_l
    >>> result = evaluate(program, testset, metrics=[rouge_l], cache_dir="runs/eval-cache")  # doctest: +SKIP
    >>> result.summary()["rouge_l"]  # doctest: +SKIP
    {'mean': 0.31, 'ci_low': 0.28, 'ci_high': 0.34, 'n': 32, 'errors': 0, 'missing_field': 0}
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import numpy as np
from tqdm.auto import tqdm

Metric = Callable[..., float]


def metric_name(metric: Metric) -> str:
    return getattr(metric, "__name__", None) or type(metric).__name__


def _lm_state(lm: Any) -> dict[str, Any] | None:
    if lm is None:
        return None
    settings = {k: v for k, v in sorted(getattr(lm, "kwargs", {}).items()) if k not in ("rollout_id",)}
    return {"model": lm.model, "settings": json.loads(json.dumps(settings, default=str))}


def program_fingerprint(program: dspy.Module) -> str:
    """A hash of everything that decides a program's outputs: LMs (with adapter hashes), prompts, demos, settings."""
    state = {
        "program": type(program).__qualname__,
        "settings": program.describe() if hasattr(program, "describe") else None,
        "default_lm": _lm_state(dspy.settings.lm),
        "predictors": {
            name: {
                "signature": str(p.signature),
                "instructions": p.signature.instructions,
                "fields": {k: f.json_schema_extra for k, f in p.signature.fields.items()},
                "demos": [d.toDict() if hasattr(d, "toDict") else d for d in p.demos],
                "lm": _lm_state(p.lm),
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
        rows: One dict per example: ``id``, ``user_id``, ``response``, the metric values, ``errors``.
        metrics: Metric names, in order.
        cached_predictions: How many predictions came from the cache.
    """

    program_fingerprint: str
    rows: list[dict[str, Any]]
    metrics: list[str]
    cached_predictions: int = 0
    cached_scores: int = 0
    recomputed_corrupt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: mean, 95% bootstrap interval, n scored, errors, and predictions missing the response."""
        summary = {}
        for name in self.metrics:
            values = [r[name] for r in self.rows if isinstance(r.get(name), float)]
            low, high = bootstrap_interval(values)
            summary[name] = {
                "mean": float(np.mean(values)) if values else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n": len(values),
                "errors": sum(1 for r in self.rows if name in r.get("errors", {})),
                "missing_field": sum(1 for r in self.rows if r.get("missing_field")),
            }
        return summary

    def to_jsonl(self, path: str | Path) -> None:
        Path(path).write_text("".join(json.dumps(row, default=str) + "\n" for row in self.rows))

    def to_csv(self, path: str | Path) -> None:
        columns = ["id", "user_id", *self.metrics, "response", "errors"]
        with Path(path).open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({**row, "errors": json.dumps(row.get("errors", {}))})


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
) -> EvaluationResult:
    """Run ``program`` on ``dataset`` and score it with every metric, caching predictions and scores on disk.

    A program failure or a metric exception on one example is recorded for that example (with the error) and the
    run goes on; a prediction without ``output_field`` scores as a failure counted under ``missing_field``.

    Args:
        program: The program to evaluate.
        dataset: Examples with ids (``example.id``; otherwise their inputs are hashed).
        metrics: DSPy metrics ``metric(example, prediction, trace=None) -> float``.
        cache_dir: Folder of the disk cache (``None``: no caching).
        num_threads: Concurrent program runs.
        progress: Show a progress bar.
        output_field: The prediction field metrics read.
    """
    store = _Store(cache_dir)
    fingerprint = program_fingerprint(program)
    names = [metric_name(m) for m in metrics]
    counts = {"predictions": 0, "scores": 0}
    counts_lock = threading.Lock()

    def cached(key: str, kind: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored result for ``key``, else ``compute()``'s (an exception becomes a stored ``error``)."""
        result = store.get(key)
        if result is not None:
            with counts_lock:
                counts[kind] += 1
            return result
        try:
            result = compute()
        except Exception as err:
            result = {"error": f"{type(err).__name__}: {err}"}
        result = json.loads(json.dumps(result, default=str))
        store.set(key, result)
        return result

    def predict(example: dspy.Example) -> dict[str, Any]:
        prediction = program(**example.inputs().toDict())
        return {"fields": {k: v for k, v in prediction.items() if k != "retrieved"}}

    def score(metric: Metric, example: dspy.Example, prediction: dspy.Prediction) -> dict[str, Any]:
        value = float(metric(example, prediction))
        return {"value": value} if math.isfinite(value) else {"error": f"non-finite score {value}"}

    def one(example: dspy.Example) -> dict[str, Any]:
        key = example_id(example)
        row: dict[str, Any] = {"id": key, "user_id": example.get("user_id"), "errors": {}}
        outputs = cached(f"prediction:{fingerprint}:{key}", "predictions", lambda: predict(example))
        if "error" in outputs:
            row["errors"]["program"] = outputs["error"]
            return row
        fields = outputs["fields"]
        row["response"] = fields.get(output_field)
        if not isinstance(fields.get(output_field), str):
            row["missing_field"] = True
            for name in names:
                row[name] = 0.0
            return row
        prediction = dspy.Prediction(**fields)
        for metric, name in zip(metrics, names, strict=True):
            result = cached(
                f"score:{fingerprint}:{key}:{name}", "scores", lambda m=metric: score(m, example, prediction)
            )
            if "value" in result:
                row[name] = result["value"]
            else:
                row["errors"][name] = result["error"]
        return row

    rows: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        futures = {pool.submit(one, example): index for index, example in enumerate(dataset)}
        for future in tqdm(as_completed(futures), total=len(futures), desc="evaluating", disable=not progress):
            rows[futures[future]] = future.result()
    return EvaluationResult(
        program_fingerprint=fingerprint,
        rows=[rows[i] for i in range(len(dataset))],
        metrics=names,
        cached_predictions=counts["predictions"],
        cached_scores=counts["scores"],
        recomputed_corrupt=store.corrupt,
    )
