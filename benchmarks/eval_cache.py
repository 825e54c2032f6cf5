"""Cached evaluation: wall time of a second identical evaluation run vs the first, with one disk cache.

Run: ``.venv/bin/python benchmarks/eval_cache.py [--examples 20]``. The LM's own DSPy cache is off, so the first run
really generates and the second is served by the evaluation cache alone. Prints both times and their ratio
(target <= 0.02 with the embedded model).
"""

import argparse
import tempfile
import time

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.evals import evaluate, meteor, rouge_1, rouge_l
from restpg_dspy.programs import RAGWriter
from restpg_dspy.retrieval import BM25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    program = RAGWriter(retriever=BM25(k=2))
    program.set_lm(restpg_dspy.lm("local", cache=False, max_tokens=args.max_tokens))
    dataset = synthetic("test", seed=0, users=args.examples, requests_per_user=1)
    metrics = [rouge_1, rouge_l, meteor]
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        first = evaluate(program, dataset, metrics, cache_dir=cache_dir, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = evaluate(program, dataset, metrics, cache_dir=cache_dir, progress=False)
        warm = time.perf_counter() - start
    assert second.rows == first.rows and second.cached_predictions == len(dataset)
    print(f"examples: {len(dataset)}  metrics: {[m.__name__ for m in metrics]}")
    print(f"first run (generates):   {cold:8.2f} s")
    print(f"second run (from cache): {warm:8.3f} s")
    print(f"ratio second / first: {warm / cold:.4f}")


if __name__ == "__main__":
    main()
