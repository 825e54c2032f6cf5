"""A method's training budget, chosen from training and validation statistics only, by a rule fixed in advance.

Rules (the budget is the number of training epochs; every other setting is the config's):

* ``best_on_val``, a baseline's own best budget: train at each budget of the grid in increasing order, score the
  first reported metric on the validation split, stop at the first budget that does not beat the best so far, and
  keep the best (ties go to the smaller budget).
* ``best_of_grid``, the same without stopping early: every budget of the grid is trained and scored, the best kept
  (ties go to the smaller budget). A validation curve that dips before it rises (over-fitting the notes' wording,
  say, before their content) stops ``best_on_val`` at the dip.
* ``room``, an SFT stage that leaves the E-step something to choose: from the largest budget down, keep the first
  whose SFT stage scores below ``max_val`` on validation and whose round-1 E-step, drawn without training
  (:meth:`~restpg_dspy.optimizers.RESTPG.explore`), has an ``option_spread_rate`` of at least ``min_spread``; if none
  does, the budget whose E-step spread most.

Each budget's training is the one the table later runs (same rows, settings and adapters folder, so it is reused),
and every result is recorded in a small JSON file, under the config's ``run_dir``, the method and the rule: a budget
recorded there is never trained or scored again, so the file can be committed beside the config and the calibration
resumed on another machine.

Example:
    >>> choose_best_on_val({1: 0.40, 2: 0.55, 4: 0.55})
    2
    >>> choose_room({4: (0.95, None), 2: (0.70, 0.31), 1: (0.45, 0.60)}, max_val=0.9, min_spread=0.25)
    2
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.experiments import registry
from restpg_dspy.experiments.config import TableConfig

RULES = ("best_on_val", "best_of_grid", "room")


def choose_best_on_val(scores: dict[float, float]) -> float:
    """The best budget among those scored (ties go to the smaller): ``best_on_val``'s and ``best_of_grid``'s choice."""
    best = None
    for budget in sorted(scores):
        if best is None or scores[budget] > scores[best]:
            best = budget
    return best


def choose_room(trials: dict[float, tuple[float, float | None]], *, max_val: float, min_spread: float) -> float:
    """The ``room`` choice from ``{budget: (validation score, option spread or None)}``."""
    for budget in sorted(trials, reverse=True):
        score, spread = trials[budget]
        if score < max_val and spread is not None and spread >= min_spread:
            return budget
    explored = {b: spread for b, (_, spread) in trials.items() if spread is not None}
    return max(explored, key=lambda b: (explored[b], -b)) if explored else min(trials)


def calibrate(
    config: TableConfig,
    method: str,
    rule: str,
    epochs: list[float],
    record: str | Path,
    *,
    max_val: float = 0.9,
    min_spread: float = 0.25,
) -> dict[str, Any]:
    """Choose ``method``'s number of training epochs among ``epochs`` by ``rule``; record every trial in ``record``.

    Returns:
        The record of this method and rule: its trials (validation score, E-step summary, wall time) and ``chosen``.
    """
    from restpg_dspy.evals import evaluate
    from restpg_dspy.evals.metrics import metric_name
    from restpg_dspy.experiments.table import (
        build_method,
        compile_dir,
        compile_method,
        config_lms,
        load_task,
        load_val,
        report_metrics,
        task_slug,
        task_student,
    )
    from restpg_dspy.optimizers import RESTPG

    registry.check_name("rule", rule, RULES)
    if registry.METHODS[method].optimizer is None:
        raise UsageError(f"{method!r} is not trained: calibrate a compiled method ({list(registry.COMPILED)})")
    if not epochs:
        raise UsageError("calibrate needs at least one budget (epochs)")
    record = Path(record)
    results = json.loads(record.read_text()) if record.exists() else {}
    # One record file serves every config of an experiment: each config's trials are kept under its run_dir.
    entry = results.setdefault(config.run_dir, {}).setdefault(method, {}).setdefault(rule, {"trials": {}})
    student, _, judge = config_lms(config)
    task = config.tasks[0]
    slug = task_slug(task)
    trainset, _ = load_task(task, config)
    valset = load_val(task, config)
    metrics = report_metrics(config, judge)
    primary = metric_name(metrics[0])
    shared = Path(config.shared_dir or config.run_dir)

    def trial(budget: float, explore: bool) -> dict[str, Any]:
        key = f"{budget:g}"
        # The same budget's training and validation, recorded under another rule of this method, are the same.
        rules = results[config.run_dir][method].values()
        earlier = [r["trials"][key] for r in rules if "val" in r["trials"].get(key, {})]
        done = entry["trials"].get(key) or (dict(earlier[0]) if earlier else {})
        if "val" in done and (not explore or "explore" in done):
            entry["trials"][key] = done
            return done
        start = time.perf_counter()
        own = config.overrides.get(method, {})
        trained = dataclasses.replace(
            config,
            overrides={
                **config.overrides,
                method: {**own, "train_kwargs": {**own.get("train_kwargs", {}), "num_train_epochs": budget}},
            },
        )
        program, _ = build_method(method, trained, task_student(config, slug, student))
        run_dir = shared / slug / "calibration" / compile_dir(trained, slug, method).name
        compiled = compile_method(
            method,
            program,
            trained,
            trainset=trainset,
            judge=judge,
            run_dir=run_dir,
            adapters_dir=shared / slug / "adapters",
            rounds=0,
        )
        summary = evaluate(compiled, valset, metrics, cache_dir=shared / "cache", num_threads=config.num_threads)
        done = {**done, "val": summary.summary()[primary]["mean"], "val_summary": summary.summary()}
        done["model"] = compiled.restpg_history[-1]["model"]
        if explore:
            settings = trained.method_settings(method)
            reward = registry.resolve_metric(config.reward, judge)
            explorer = RESTPG(
                reward,
                **{**settings["optimizer"], "run_dir": str(run_dir / "explore"), "num_threads": config.num_threads},
            )
            done["explore"] = explorer.explore(compiled, trainset)
        done["wall_s"] = round(done.get("wall_s", 0.0) + time.perf_counter() - start, 1)
        entry["trials"][key] = done
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[calibrate {method} {rule}] epochs={key} val {primary}={done['val']:.3f} {_spread(done)}", flush=True)
        return done

    if rule in ("best_on_val", "best_of_grid"):
        scores: dict[float, float] = {}
        for budget in sorted(epochs):
            scores[budget] = trial(budget, explore=False)["val"]
            if rule == "best_on_val" and choose_best_on_val(scores) != budget and len(scores) > 1:
                break
        chosen = choose_best_on_val(scores)
    else:
        trials: dict[float, tuple[float, float | None]] = {}
        for budget in sorted(epochs, reverse=True):
            done = trial(budget, explore=False)
            if done["val"] < max_val:
                done = trial(budget, explore=True)
            trials[budget] = (done["val"], done.get("explore", {}).get("option_spread_rate"))
            if trials[budget][1] is not None and trials[budget][1] >= min_spread:
                break
        chosen = choose_room(trials, max_val=max_val, min_spread=min_spread)
        entry.update(max_val=max_val, min_spread=min_spread)
    entry.update(chosen=chosen, metric=primary, epochs=list(epochs))
    record.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[calibrate {method} {rule}] chosen: {chosen:g} epochs", flush=True)
    return entry


def _spread(done: dict[str, Any]) -> str:
    explored = done.get("explore")
    if not explored:
        return ""
    keys = ("option_spread_rate", "reward_spread_rate", "distinct_per_input", "reward_mean")
    return " ".join(f"{k}={explored.get(k)}" for k in keys)
