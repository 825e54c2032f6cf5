import threading
import time

import pytest

from restpg_dspy.concurrency import run_concurrently


def test_results_keep_the_order_of_the_items_and_each_is_handed_over_as_it_exists():
    seen = []
    lock = threading.Lock()

    def slow_first(x):
        time.sleep(0.05 * (5 - x))
        return x * 10

    def keep(result):
        with lock:
            seen.append(result)

    assert run_concurrently(slow_first, range(5), num_threads=5, progress=False, on_result=keep) == [0, 10, 20, 30, 40]
    assert seen[0] == 40 and sorted(seen) == [0, 10, 20, 30, 40]  # the quickest first, not in item order


def test_an_error_propagates_and_cancels_the_items_not_yet_started():
    started = []

    def work(x):
        started.append(x)
        if x == 0:
            raise ValueError("item 0 is broken")
        time.sleep(0.05)
        return x

    with pytest.raises(ValueError, match="item 0 is broken"):
        run_concurrently(work, range(50), num_threads=2, progress=False)
    assert len(started) < 50
