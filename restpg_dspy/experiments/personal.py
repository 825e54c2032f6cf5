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
