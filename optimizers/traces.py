"""Program traces as plain data: record them, force them, and turn them into fine-tuning rows.

A trace is the list of predictor calls one program run made: ``[{"predictor": name, "inputs": {...},
"outputs": {...}}, ...]``. It is JSON, so a run directory can hold thousands of them and a resumed compile rebuilds
its training rows without re-running anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import dspy

from restpg_dspy.errors import UsageError

Trace = list[dict[str, Any]]


def predictor_lms(program: dspy.Module) -> dict[str, dspy.LM]:
    """The LM each predictor runs on (its own, else the configured one).

    Raises:
        UsageError: some predictors have no LM (naming them).
    """
    lms = {name: predictor.lm or dspy.settings.lm for name, predictor in program.named_predictors()}
    missing = [name for name, lm in lms.items() if lm is None]
    if missing:
        raise UsageError(f"predictors {missing} have no LM: set predictor.lm or dspy.configure(lm=...)")
    return lms


def without_lms(program: dspy.Module) -> dspy.Module:
    """A deep copy of ``program`` whose predictors carry no LM (cheap to copy again, nothing shared by accident)."""
    predictors = program.predictors()
    saved = [p.lm for p in predictors]
    try:
        for p in predictors:
            p.lm = None
        return program.deepcopy()
    finally:
        for p, lm in zip(predictors, saved, strict=True):
            p.lm = lm


def with_lms(template: dspy.Module, lm_for: Callable[[str], dspy.LM]) -> dspy.Module:
    """A copy of an LM-less ``template`` with ``lm_for(name)`` set on each predictor."""
    program = template.deepcopy()
    for name, predictor in program.named_predictors():
        predictor.lm = lm_for(name)
    return program


def output_field(predictor: dspy.Predict) -> str:
    names = list(predictor.signature.output_fields)
    if len(names) != 1:
        raise UsageError(f"predictor with outputs {names}: REST-PG trains predictors with exactly one output field")
    return names[0]


def record(program: dspy.Module, inputs: dict[str, Any]) -> tuple[dspy.Prediction, Trace]:
    """Run ``program`` and return its prediction and trace."""
    names = {id(p): name for name, p in program.named_predictors()}
    with dspy.context(trace=[]):
        prediction = program(**inputs)
        calls = list(dspy.settings.trace)
    trace = [
        {
            "predictor": names[id(predictor)],
            "inputs": {k: v for k, v in call_inputs.items() if k in predictor.signature.input_fields},
            "outputs": {k: outputs[k] for k in predictor.signature.output_fields},
        }
        for predictor, call_inputs, outputs in calls
        if id(predictor) in names
    ]
    return prediction, trace


def forced(
    template: dspy.Module,
    inputs: dict[str, Any],
    output_for: Callable[[str, dict[str, Any]], str],
    only: Collection[str] | None = None,
) -> tuple[dspy.Prediction, Trace]:
    """Run ``template`` with every predictor (or those named in ``only``, the others calling their LMs) answering
    ``output_for(name, its inputs)`` instead of calling an LM.

    This is how gold outputs and teacher reasoning enter a program's own prompts: retrieval and rendering run for
    real, only the predictors' answers are supplied.
    """
    program = template.deepcopy()
    for name, predictor in program.named_predictors():
        if only is None or name in only:
            predictor.forward = _forced_forward(predictor, name, output_for)
    return record(program, inputs)


def _forced_forward(predictor: dspy.Predict, name: str, output_for: Callable[[str, dict[str, Any]], str]):
    def forward(**kwargs: Any) -> dspy.Prediction:
        inputs = {k: v for k, v in kwargs.items() if k in predictor.signature.input_fields}
        prediction = dspy.Prediction(**{output_field(predictor): output_for(name, inputs)})
        if dspy.settings.trace is not None:
            dspy.settings.trace.append((predictor, inputs, prediction))
        return prediction

    return forward


def adapter_of(program: dspy.Module) -> dspy.Adapter:
    """The adapter the program serves its predictors with (so training rows match inference prompts)."""
    return getattr(program, "adapter", None) or dspy.settings.adapter or dspy.ChatAdapter()


def trace_rows(program: dspy.Module, trace: Trace, weight: float = 1.0) -> list[dict[str, Any]]:
    """Chat fine-tuning rows, one per predictor call: ``{"messages": [...], "weight": w}``."""
    adapter = adapter_of(program)
    predictors = dict(program.named_predictors())
    rows = []
    for call in trace:
        signature = predictors[call["predictor"]].signature
        row = adapter.format_finetune_data(signature, [], call["inputs"], call["outputs"])
        rows.append({**row, "weight": weight})
    return rows
