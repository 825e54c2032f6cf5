"""Personal adapters: a small LoRA adapter per user, trained on that user's own history over a compiled program.

REST-PG trains one model for every user, which learns of a user only through its prompt. :class:`PersonalAdapters`
adds what OPPU-style personalization does: for each user whose history is known when serving (for an evaluation, the
*test* users' profiles, never their test outputs) it trains a fresh low-rank adapter over the program's adapter (see
``stack_on`` in :class:`~restpg_dspy.training.LoRATrainingConfig`) on rows made from the user's profile items. Each
task says how an item becomes a request and its output (:meth:`~restpg_dspy.tasks.TaskFormat.item_example`); the
row is the routed predictor's own prompt, with the item itself left out of the profile it shows (an adapter must not
learn to copy) and the other predictors' outputs (the reasoning) written by the shared program. The result is a
:class:`~restpg_dspy.programs.PersonalRouter`, which serves each call on its user's adapter.

The loop over users resumes: a user's adapter and summary go to ``run_dir`` when it is trained, and a user recorded
there is never trained again.

Example:
    >>> from restpg_dspy.optimizers import PersonalAdapters
    >>> optimizer = PersonalAdapters(r=4, num_train_epochs=8, run_dir="runs/personal")
    >>> routed = optimizer.compile(compiled, users=testset)  # doctest: +SKIP
    >>> routed(request=example.request, profile=example.profile, user_id=example.user_id)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from restpg_dspy.concurrency import run_concurrently
from restpg_dspy.errors import UsageError
from restpg_dspy.optimizers.run_dir import RunDir
from restpg_dspy.optimizers.traces import forced, output_field, predictor_lms, trace_rows, with_lms, without_lms
from restpg_dspy.serving import serving_engine
from restpg_dspy.tasks import detect_task

if TYPE_CHECKING:
    from restpg_dspy.programs.routing import PersonalRouter

logger = logging.getLogger(__name__)
USERS = "users.jsonl"


@dataclass
class PersonalAdaptersConfig:
    """The knobs of :class:`PersonalAdapters`, with defaults sized for a handful of profile items per user.

    Attributes:
        r: Rank of each personal adapter (it is trained over the program's adapter, which keeps its own rank).
        lora_alpha: LoRA scaling numerator of the personal adapter.
        num_train_epochs: Passes over a user's rows (a user has about as many rows as profile items).
        learning_rate: Peak learning rate.
        routed: The predictors trained on a user's rows and run on their adapter; ``None``: those whose output is
            ``response_field`` (the generation step: profile items carry no reasoning).
        response_field: The output field that a profile item's text answers.
        train_kwargs: Further fine-tuning knobs (:class:`~restpg_dspy.training.LoRATrainingConfig`).
        run_dir: Where users' summaries, rows and adapters go (resumable); ``None``: a temporary folder.
        num_threads: Concurrent program runs while making a user's rows.
        verbose: Show progress.
    """

    r: int = 4
    lora_alpha: int = 8
    num_train_epochs: float = 8.0
    learning_rate: float = 1e-3
    routed: tuple[str, ...] | None = None
    response_field: str = "response"
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    num_threads: int = 8
    verbose: bool = True

    def training(self, output_dir: Path, stack: bool) -> dict[str, Any]:
        """The ``train_kwargs`` of one user's fine-tune."""
        knobs = {"r": self.r, "lora_alpha": self.lora_alpha, "num_train_epochs": self.num_train_epochs}
        return {
            "output_dir": str(output_dir),
            "learning_rate": self.learning_rate,
            **knobs,
            **({"stack_on": "adapter"} if stack else {}),
            **self.train_kwargs,
        }


class PersonalAdapters(Teleprompter):
    """Train a personal adapter for each user over a compiled program and route each call to its user's adapter.

    Args:
        config: The knobs (:class:`PersonalAdaptersConfig`, which documents each).
        **settings: Fields of ``PersonalAdaptersConfig`` by name; they override ``config``.
    """

    def __init__(self, config: PersonalAdaptersConfig | None = None, **settings: Any):
        super().__init__()
        base = config or PersonalAdaptersConfig()
        self.config = dataclasses.replace(base, **settings)

    def compile(self, student: dspy.Module, *, users: list[dspy.Example]) -> PersonalRouter:
        """Train every user's adapter (those recorded in ``run_dir`` are reused) and return the routing program.

        Args:
            student: A program on a fine-tunable LM (REST-PG's compiled program, or any such program); its routed
                predictors' LM is the shared model.
            users: Examples with ``user_id`` and ``profile`` (several examples of a user share one history): the
                histories known at serving time. Their outputs are never read.

        Returns:
            A :class:`~restpg_dspy.programs.PersonalRouter` over ``student``, with ``personal_adapters_log`` (one
            summary per user) attached.

        Raises:
            UsageError: an example without ``user_id`` or ``profile`` (named), routed predictors that share no
                fine-tunable LM, or a task whose profile items cannot be requests.
        """
        profiles = _histories(users)
        lms = predictor_lms(student)
        routed = self._routed(student)
        shared = {lms[name].model for name in routed}
        if len(shared) > 1:
            raise UsageError(f"the routed predictors {list(routed)} run on several LMs ({sorted(shared)}); use one")
        lm = lms[routed[0]]
        engine = serving_engine(lm)
        if engine is None or not getattr(getattr(lm, "provider", None), "finetunable", False):
            raise UsageError(
                f"personal adapters are trained with lm.finetune on a local engine; {lm.model!r} is not fine-tunable"
            )
        stack = engine.adapter_path(lm.model) is not None
        run = RunDir(self.config.run_dir or _temporary_dir(), self._identity(student, lm, routed))
        # A recorded user whose adapter is gone (the run directory moved without it) is trained again.
        done = {r["user_id"]: r for r in run.read_jsonl(USERS) if r["adapter"] is None or Path(r["adapter"]).is_dir()}
        template = without_lms(student)
        bar = tqdm(total=len(profiles), initial=sum(u in done for u in profiles), desc="personal adapters", unit="user")
        bar.disable = not self.config.verbose
        try:
            for user, profile in profiles.items():
                if user in done:
                    continue
                done[user] = self._train_user(run, template, lms, routed, lm, stack, user, profile)
                run.append_jsonl(USERS, done[user])
                bar.update(1)
        finally:
            bar.close()
        from restpg_dspy.programs.routing import PersonalRouter  # (the router's module imports this package)

        log = [done[user] for user in profiles]
        router = PersonalRouter(student, {row["user_id"]: row["adapter"] for row in log if row["adapter"]}, routed)
        router.personal_adapters_log = log
        router.personal_adapters_run_dir = str(run.path)
        return router

    def _routed(self, student: dspy.Module) -> tuple[str, ...]:
        names = dict(student.named_predictors())
        routed = self.config.routed or tuple(
            name for name, p in names.items() if output_field(p) == self.config.response_field
        )
        if not routed:
            raise UsageError(
                f"no predictor of {type(student).__name__} writes '{self.config.response_field}': name the predictors "
                "to train (routed=...)"
            )
        return tuple(routed)

    def _identity(self, student: dspy.Module, lm: dspy.LM, routed: tuple[str, ...]) -> dict[str, Any]:
        knobs = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("run_dir", "num_threads")}
        knobs.pop("verbose")
        return {
            "optimizer": type(self).__name__,
            **json.loads(json.dumps(knobs, default=str)),
            "routed": list(routed),
            "student": type(student).__name__,
            "describe": student.describe() if hasattr(student, "describe") else None,
            "shared_lm": lm.model,
        }

    def _train_user(
        self,
        run: RunDir,
        template: dspy.Module,
        lms: dict[str, dspy.LM],
        routed: tuple[str, ...],
        lm: dspy.LM,
        stack: bool,
        user: str,
        profile: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Make ``user``'s rows, fine-tune their adapter and return the user's summary."""
        started = time.monotonic()
        task = getattr(template, "task", None) or detect_task(profile)
        pairs = [(index, task.item_example(item)) for index, item in enumerate(profile)]
        pairs = [(index, pair) for index, pair in pairs if pair is not None]

        def rows_of(entry: tuple[int, tuple[str, str]]) -> list[dict[str, Any]]:
            index, (request, output) = entry
            others = profile[:index] + profile[index + 1 :]  # the item itself is never shown: nothing to copy
            program = with_lms(template, lms.__getitem__)
            _, trace = forced(program, {"request": request, "profile": others}, lambda *_: output, only=routed)
            return trace_rows(template, [call for call in trace if call["predictor"] in routed])

        rows = [
            row
            for rows in run_concurrently(
                rows_of, pairs, num_threads=self.config.num_threads, description=f"rows of {user}", progress=False
            )
            for row in rows
        ]
        summary: dict[str, Any] = {"user_id": user, "items": len(profile), "rows": len(rows)}
        if not rows:
            logger.warning("user %s has no profile item that makes a request of task %s: no adapter", user, task.name)
            return {**summary, "adapter": None, "model": None, "skipped": "no profile item makes a training row"}
        run.write_jsonl(f"rows/{_file_name(user)}.jsonl", rows)
        training = lm.finetune(
            train_data=rows, train_data_format="chat", train_kwargs=self.config.training(run.path / "adapters", stack)
        )
        tuned = training.result()
        log = getattr(training, "log", {}) or {}
        adapter = Path(log["adapter"])
        return {
            **summary,
            "adapter": str(adapter),
            "model": tuned.model,
            "steps": log.get("steps"),
            "train_runtime_s": log.get("runtime_s"),
            "runtime_s": round(time.monotonic() - started, 2),
            "adapter_bytes": sum(f.stat().st_size for f in adapter.iterdir() if f.is_file()),
        }


def _histories(users: list[dspy.Example]) -> dict[str, list[dict[str, Any]]]:
    """Each user's profile, from examples that may repeat a user (items of all their examples, each once)."""
    if not users:
        raise UsageError("users is empty: personal adapters need the users whose history is known")
    profiles: dict[str, list[dict[str, Any]]] = {}
    seen: dict[str, set[str]] = {}
    for index, example in enumerate(users):
        name = f"user example {index} ({example.get('id', 'no id')})"
        if example.get("user_id") in (None, ""):
            raise UsageError(f"{name} has no 'user_id': personal adapters are trained per user")
        profile = example.get("profile")
        if not isinstance(profile, list) or not all(isinstance(item, dict) for item in profile):
            raise UsageError(f"{name} has no 'profile' list of items")
        user = str(example.get("user_id"))
        items, keys = profiles.setdefault(user, []), seen.setdefault(user, set())
        for item in profile:
            key = json.dumps(item, sort_keys=True, default=str)
            if key not in keys:
                keys.add(key)
                items.append(item)
    return profiles


def _file_name(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user)


def _temporary_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="restpg-personal-")


__all__ = ["PersonalAdapters", "PersonalAdaptersConfig"]
