"""The application layer: experiment configs, the one registry of methods/metrics/retrievers/tasks, the table runner
and the demo. The command line is built on it; the library's lower layers (engines, programs, optimizers, evals)
never import it.

Example:
    >>> from restpg_dspy.experiments import METHODS, TableConfig
    >>> TableConfig(methods=["sft", "rest-pg"]).methods == [m for m in METHODS if m in ("sft", "rest-pg")]
    True
"""

from restpg_dspy.experiments.config import TableConfig
from restpg_dspy.experiments.registry import ABLATION_PAIRS, METHODS, METRICS, PAPER_ORDER, RETRIEVERS
from restpg_dspy.experiments.table import (
    build_method,
    compile_method,
    config_lms,
    load_task,
    report_metrics,
    resolve_metrics,
    run_table,
)

__all__ = [
    "ABLATION_PAIRS",
    "METHODS",
    "METRICS",
    "PAPER_ORDER",
    "RETRIEVERS",
    "TableConfig",
    "build_method",
    "compile_method",
    "config_lms",
    "load_task",
    "report_metrics",
    "resolve_metrics",
    "run_table",
]
