"""Dynamic batching: wall time of N concurrent calls vs the same N calls made one after another.

Run: ``.venv/bin/python benchmarks/concurrent_calls.py [--calls 16] [--model local] [--max-tokens 64]``.
Prints both wall times and their ratio (the target on 2 CPU cores is >= 3x).
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import restpg_dspy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--model", default="local", help="'local' or 'local:<path>'")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    lm = restpg_dspy.lm(args.model, cache=False, temperature=0.7, max_tokens=args.max_tokens, max_batch_size=args.calls)
    prompts = [f"Write two sentences about the number {i}." for i in range(args.calls)]
    lm("Warm-up call.")
    engine = lm.engine

    tokens_before = engine.stats["generated_tokens"]
    start = time.perf_counter()
    for prompt in prompts:
        lm(prompt)
    sequential = time.perf_counter() - start
    sequential_tokens = engine.stats["generated_tokens"] - tokens_before

    tokens_before, batches_before = engine.stats["generated_tokens"], engine.stats["batches"]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.calls) as pool:
        list(pool.map(lm, prompts))
    concurrent = time.perf_counter() - start
    concurrent_tokens = engine.stats["generated_tokens"] - tokens_before

    print(f"model: {lm.model}  calls: {args.calls}  max_tokens: {args.max_tokens}")
    print(f"sequential: {sequential:7.2f} s  ({sequential_tokens / sequential:6.1f} tok/s)")
    print(
        f"concurrent: {concurrent:7.2f} s  ({concurrent_tokens / concurrent:6.1f} tok/s, "
        f"{engine.stats['batches'] - batches_before} batches)"
    )
    print(f"speed-up (sequential / concurrent wall time): {sequential / concurrent:.2f}x")


if __name__ == "__main__":
    main()
