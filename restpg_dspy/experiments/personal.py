"""Rows of a table with a personal adapter per test user (``<method>+personal``): where their adapters live, how
the compiled method gets them (:class:`~restpg_dspy.optimizers.PersonalAdapters`), and the row of the compiled
method alone at the personal ``k``.

Example:
    >>> from restpg_dspy.experiments import TableConfig
    >>> alone_name(TableConfig(personal={"k": 2}), "rest-pg+personal")
    'rest-pg@k2'
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import dspy

from restpg_dspy.experiments import registry
from restpg_dspy.experiments.config import TableConfig


def personal_dir(compiled: Path, config: TableConfig) -> Path:
    """Where a ``<method>+personal`` row's adapters live: beside its compiled method's run (``compiled``), named by a
    digest of the personal settings."""
    digest = hashlib.sha256(json.dumps(config.personal, sort_keys=True).encode()).hexdigest()[:10]
    return compiled.with_name(f"{compiled.name}-personal-{digest}")


def personalize(
    program: dspy.Module, config: TableConfig, users: list[dspy.Example], run_dir: Path
) -> tuple[dspy.Module, dspy.Module | None]:
    """``program`` with a personal adapter for each of ``users`` (their profiles; see
    :class:`~restpg_dspy.optimizers.PersonalAdapters`), and ``program`` alone at the personal ``k`` when it differs
    from the config's (else ``None``)."""
    from restpg_dspy.optimizers import PersonalAdapters

    settings = dict(config.personal)
    k = settings.pop("k", config.k)
    alone = None
    if k != config.k:  # the profile the personal rows' prompts show, in training and in serving
        program = program.deepcopy()
        program.retriever = registry.RETRIEVERS[config.retriever](k=k)
        alone = program
    optimizer = PersonalAdapters(run_dir=str(run_dir), num_threads=config.num_threads, **settings)
    return optimizer.compile(program, users=users), alone


def alone_name(config: TableConfig, method: str) -> str:
    """The row of a ``<method>+personal`` row's compiled program alone at the personal ``k``."""
    return f"{registry.METHODS[method].personal_of}@k{config.personal.get('k', config.k)}"


def with_user_input(examples: list[dspy.Example]) -> list[dspy.Example]:
    """The examples with ``user_id`` among their inputs (a routed program picks the user's adapter by it)."""
    return [e.with_inputs(*e._input_keys, "user_id") for e in examples]


def personal_costs_table(root: Path, config: TableConfig) -> str | None:
    """What the table's personal adapters cost and served, from each task folder's ``<method>.users.jsonl`` and
    ``<method>.predictions.jsonl`` (``None`` when no row has personal adapters).

    Columns: users with an adapter of all users; profile rows per user; per user, the wall seconds to make their rows
    and train their adapter (median) and the published adapter's size on disk (median); the training time of all
    users; the test predictions a personal adapter served, of all; the test responses that differ from those of the
    row it is compared with (the compiled program alone at the personal ``k``, or the compiled method), of all.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "t").mkdir()
        >>> seconds = {"a": 30, "b": 50}
        >>> users = [{"user_id": u, "rows": 4, "runtime_s": s, "adapter_bytes": 2**21} for u, s in seconds.items()]
        >>> _ = (root / "t" / "sft+personal.users.jsonl").write_text("".join(json.dumps(u) + "\\n" for u in users))
        >>> print(personal_costs_table(root, TableConfig()))
        | task | method | adapters | rows/user | median s/user | in all | MiB/adapter | personal predictions | changed |
        |---|---|---|---|---|---|---|---|---|
        | t | sft+personal | 2 of 2 | 4.0 | 40.0 | 1.3 min | 2.0 | not evaluated | not evaluated |
    """
    from restpg_dspy.evals.paired import read_rows
    from restpg_dspy.files import read_json_lines

    lines = []
    for log in sorted(root.glob("*/*.users.jsonl")):
        method = log.name.removesuffix(".users.jsonl")
        users = read_json_lines(log, "personal adapters' log")
        trained = [u for u in users if u.get("adapter_bytes")]
        seconds = [u["runtime_s"] for u in trained]
        predictions = log.with_name(f"{method}.predictions.jsonl")
        served = changed = "not evaluated"
        if predictions.exists():
            rows = read_rows(predictions)
            served = f"{sum(bool(row.get('personal')) for row in rows)} of {len(rows)}"
            compared = log.with_name(f"{alone_name(config, method)}.predictions.jsonl")
            if not compared.exists():
                compared = log.with_name(f"{registry.METHODS[method].personal_of}.predictions.jsonl")
            if compared.exists():
                before = {row["id"]: row.get("response") for row in read_rows(compared)}
                both = [row for row in rows if row["id"] in before]
                changed = f"{sum(row.get('response') != before[row['id']] for row in both)} of {len(both)}"
        cells = [
            log.parent.name,
            method,
            f"{len(trained)} of {len(users)}",
            f"{statistics.fmean(u['rows'] for u in users):.1f}" if users else "-",
            f"{statistics.median(seconds):.1f}" if seconds else "-",
            f"{sum(seconds) / 60:.1f} min",
            f"{statistics.median(u['adapter_bytes'] for u in trained) / 2**20:.1f}" if trained else "-",
            served,
            changed,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return None
    header = [
        "task",
        "method",
        "adapters",
        "rows/user",
        "median s/user",
        "in all",
        "MiB/adapter",
        "personal predictions",
        "changed",
    ]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines])
