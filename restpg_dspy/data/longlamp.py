"""LongLaMP records (Kumar et al. 2024) as DSPy examples, from the Hugging Face hub or local JSON/JSONL files.

Example:
    >>> from restpg_dspy.data import load_longlamp
    >>> examples = load_longlamp("abstract_generation", "val", path="longlamp_abstract_sample.jsonl")  # doctest: +SKIP
    >>> examples[0].request, examples[0].user_id, len(examples[0].profile)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.files import read_json_lines

HUB_DATASET = "LongLaMP/LongLaMP"
TASKS = ("abstract_generation", "product_review", "topic_writing", "email")
SETTINGS = ("user", "temporal")
SPLITS = ("train", "val", "test")
# Keys that name the author of a record, in the order they are tried; the record id is the fallback.
USER_KEYS = ("user_id", "author_id", "reviewerId", "author", "user", "name")
INPUT_FIELDS = ("request", "profile")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read records from a JSONL file, a JSON list, or a JSON object holding the list under ``data``/``golds``.

    Raises:
        UsageError: the file is missing or a line/document is not valid JSON (naming the file and line).
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_json_lines(path, "data file")
    if not path.exists():
        raise UsageError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if isinstance(document, dict):
        document = document.get("data", document.get("golds"))
    if not isinstance(document, list):
        raise UsageError(f"{path}: expected a list of records (or an object with a 'data' or 'golds' list)")
    return document


def _hub_records(task: str, setting: str, split: str) -> list[dict[str, Any]]:
    if task == "email":
        raise UsageError("the email task (Avocado corpus) is not on the hub: build it locally and pass path=")
    from datasets import load_dataset

    try:
        return list(load_dataset(HUB_DATASET, f"{task}_{setting}", split=split))
    except Exception as err:
        raise UsageError(
            f"could not load {HUB_DATASET} {task}_{setting}/{split} from the Hugging Face hub or its cache "
            f"({type(err).__name__}); download it where the hub is reachable or pass path= to local files"
        ) from err


def records_to_examples(records: list[dict[str, Any]], source: str) -> list[dspy.Example]:
    """Validate records in the hub schema and turn them into examples.

    Each example has ``request`` (the record's ``input``), ``profile``, ``output``, a stable ``id``, a ``user_id``
    and every other field of the record; ``request`` and ``profile`` are its inputs.

    Raises:
        UsageError: a record lacks ``input``/``output``/``profile`` or its profile is not a list of objects
            (naming the record id or index and the field).
    """
    examples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UsageError(f"{source}, record {index}: expected a JSON object, got {type(record).__name__}")
        name = f"record {record.get('id', index)!r}" if "id" in record else f"record {index}"
        for field in ("input", "output"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise UsageError(f"{source}, {name}: field '{field}' must be a non-empty string")
        profile = record.get("profile")
        if not isinstance(profile, list):
            raise UsageError(f"{source}, {name}: field 'profile' must be a list of items, got {type(profile).__name__}")
        for position, item in enumerate(profile):
            if not isinstance(item, dict):
                raise UsageError(
                    f"{source}, {name}: profile item {position} must be an object, got {type(item).__name__}"
                )
        example_id = str(record.get("id", f"{source}:{index}"))
        user_id = next((str(record[key]) for key in USER_KEYS if record.get(key) not in (None, "")), example_id)
        extras = {k: v for k, v in record.items() if k not in ("id", "user_id", "input", "output", "profile")}
        examples.append(
            dspy.Example(
                id=example_id,
                user_id=user_id,
                request=record["input"],
                profile=profile,
                output=record["output"],
                **extras,
            ).with_inputs(*INPUT_FIELDS)
        )
    return examples


def hash_split(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The ``train`` or ``test`` part of records that one file holds for a whole task: ranked by the SHA-256 of their
    id, the lower half (rounded down) is ``train`` and the rest ``test``, whatever order the file has.

    Raises:
        UsageError: another split (one file has no ``val`` part), or records without a unique ``id``.
    """
    if split not in ("train", "test"):
        raise UsageError(f"one file is split by hash into 'train' and 'test' only; it has no {split!r} part")
    ids = [str(r.get("id")) for r in records]
    if any(r.get("id") is None for r in records) or len(set(ids)) < len(ids):
        raise UsageError("splitting records by the hash of their id needs a unique 'id' in every record")
    ranked = sorted(records, key=lambda r: hashlib.sha256(str(r["id"]).encode()).hexdigest())
    half = len(ranked) // 2
    return ranked[:half] if split == "train" else ranked[half:]


def _attach_outputs(records: list[dict[str, Any]], outputs_path: str | Path) -> list[dict[str, Any]]:
    outputs = {str(row["id"]): row["output"] for row in read_records(outputs_path)}
    missing = [str(r.get("id")) for r in records if "output" not in r and str(r.get("id")) not in outputs]
    if missing:
        raise UsageError(f"{outputs_path}: no output for record ids {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return [r if "output" in r else {**r, "output": outputs[str(r["id"])]} for r in records]


def load_longlamp(
    task: str,
    split: str = "train",
    path: str | Path | None = None,
    limit: int | None = None,
    *,
    setting: str = "user",
    seed: int | None = None,
    outputs_path: str | Path | None = None,
    split_by_hash: bool = False,
) -> list[dspy.Example]:
    """Load a LongLaMP task as ``dspy.Example``s.

    Args:
        task: ``abstract_generation``, ``product_review``, ``topic_writing`` or ``email``.
        split: ``train``, ``val`` or ``test`` (used for the hub; a local ``path`` is one split already).
        path: A local JSON/JSONL file in the hub's record schema (works offline). Without it, the hub is used.
        limit: Keep at most this many examples.
        setting: ``user`` or ``temporal`` (hub configs ``<task>_<setting>``).
        seed: With ``limit``, draw a seeded random sample instead of the first ``limit`` records.
        outputs_path: A separate ``{id, output}`` file (the email task's layout) joined to the records by id.
        split_by_hash: ``path`` holds the whole task: keep ``split``'s part of it (:func:`hash_split`).

    Returns:
        Examples with inputs ``request`` and ``profile``, and fields ``output``, ``id``, ``user_id`` and any extras.
    """
    if task not in TASKS:
        raise UsageError(f"unknown LongLaMP task {task!r}; choose one of {list(TASKS)}")
    if setting not in SETTINGS:
        raise UsageError(f"unknown setting {setting!r}; choose 'user' or 'temporal'")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    records = read_records(path) if path is not None else _hub_records(task, setting, split)
    if outputs_path is not None:
        records = _attach_outputs(records, outputs_path)
    if split_by_hash:
        records = hash_split(records, split)
    if limit is not None and limit < len(records):
        if seed is None:
            records = records[:limit]
        else:
            keep = sorted(random.Random(seed).sample(range(len(records)), limit))
            records = [records[i] for i in keep]
    return records_to_examples(records, str(path) if path is not None else f"{HUB_DATASET}/{task}_{setting}/{split}")
