"""The demo: a config file (``demo.yaml`` beside this module) run as a table, then a short printed report.

Example:
    >>> from restpg_dspy.experiments.demo import demo_config
    >>> demo_config("runs/demo").methods
    ['personalized', 'sft', 'rest-pg']
"""

from __future__ import annotations

import json
from pathlib import Path

from restpg_dspy.experiments.config import TableConfig
from restpg_dspy.experiments.registry import METHODS

DEMO_FILE = Path(__file__).with_name("demo.yaml")


def demo_config(run_dir: str | None = None) -> TableConfig:
    """The demo's settings, from :data:`DEMO_FILE` (``run_dir`` overrides its output folder)."""
    return TableConfig.from_file(DEMO_FILE, run_dir=run_dir)


def run_demo(run_dir: str) -> None:
    """The main job on the embedded model: compile SFT and REST-PG, evaluate on held-out users, print the table."""
    from restpg_dspy.evals.paired import format_difference
    from restpg_dspy.evals.report import format_interval
    from restpg_dspy.experiments.table import run_table
    from restpg_dspy.optimizers.report import report_compile_run

    config = demo_config(run_dir)
    labels = {name: METHODS[name].label for name in config.methods}
    print(
        f"restpg demo: {', '.join(labels.values())} on the synthetic {config.synthetic_task} "
        f"task ({config.synthetic_train_users} training users, {config.synthetic_test_users} held-out users), "
        "embedded SmolLM2-135M-Instruct as the student; REST-PG's hindsight reasoning comes from an ORACLE teacher "
        f"that knows the task's latent traits, standing in for a large teacher LM; outputs in {run_dir}/",
        flush=True,
    )
    results = run_table(config)
    for method in config.methods:
        if (Path(run_dir) / "synthetic" / method / "history.json").exists():
            report_compile_run(Path(run_dir) / "synthetic" / method)
    print("\nHeld-out users (mean [95% bootstrap interval]):\n")
    print(f"{'method':32s}" + "".join(f"{m:>28s}" for m in config.metrics))
    for method in config.methods:
        summary = results[method]["synthetic"]
        print(f"{labels[method]:32s}" + "".join(format_interval(summary[m], 3).rjust(28) for m in config.metrics))
    paired = json.loads((Path(run_dir) / "paired.json").read_text())["synthetic"]
    print("\nREST-PG minus SFT, paired by example (95% interval resampling users):\n")
    print(f"{'examples':32s}" + "".join(f"{m:>28s}" for m in config.metrics))
    for subset in ("all", "seen", "held_out"):
        wanted = ("rest-pg", "sft", subset, "users")
        cells = {e["metric"]: e for e in paired if (e["better"], e["worse"], e["subset"], e["unit"]) == wanted}
        if cells:
            label = f"{subset} wordings (n={next(iter(cells.values()))['n_pairs']})"
            print(f"{label:32s}" + "".join(format_difference(cells.get(m, {})).rjust(28) for m in config.metrics))
    print(
        f"\nTable: {run_dir}/table.md   paired differences: {run_dir}/paired.md   plots: {run_dir}/scores_*.png, "
        f"{run_dir}/synthetic/rest-pg/rewards.png"
    )
