"""One way to run work concurrently: the evaluation, the teacher's notes, the E-step and validation all use it.

Program runs spend their time waiting on an engine, which batches concurrent requests, so threads are what make them
fast. Results come back in the order of the items; each is handed to ``on_result`` as soon as it exists (so a run
directory or a cache keeps it even if a later item is interrupted). An exception raised by the work cancels the
items not yet started and propagates: work whose failures are data (an example the program could not answer) catches
them itself and returns them as a record.

Example:
    >>> from restpg_dspy.concurrency import run_concurrently
    >>> run_concurrently(lambda x: x * x, [1, 2, 3], num_threads=2, progress=False)
    [1, 4, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_concurrently(
    work: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    num_threads: int,
    description: str = "",
    progress: bool = True,
    on_result: Callable[[Result], Any] | None = None,
) -> list[Result]:
    """Run ``work`` on every item from ``num_threads`` threads; return the results in the order of ``items``.

    Args:
        work: The function applied to each item.
        items: The items.
        num_threads: Threads at most.
        description: The progress bar's label.
        progress: Show a progress bar.
        on_result: Called in the worker thread with each result as soon as it exists.

    Raises:
        Exception: the first exception ``work`` or ``on_result`` raised; items not yet started are cancelled.
    """
    if not items:
        return []

    def run(item: Item) -> Result:
        result = work(item)
        if on_result is not None:
            on_result(result)
        return result

    results: dict[int, Result] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, num_threads))
    try:
        futures = {pool.submit(run, item): index for index, item in enumerate(items)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=description, disable=not progress):
            results[futures[future]] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[index] for index in range(len(items))]
