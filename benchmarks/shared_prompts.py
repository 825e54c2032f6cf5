"""Sampling n answers to one prompt vs one answer to each of n different prompts of the same length.

Run: ``.venv/bin/python benchmarks/shared_prompts.py [--model local] [--rows 16] [--prompt-tokens 300]``.
The optimizer's E-step asks for several samples per input; rows with the same prompt share one prefill, so the
shared batch should take less time than the distinct one for the same number of generated tokens. Prints the
median wall time of each (alternating runs) and their ratio (shared / distinct; below 1 is faster).
"""

import argparse
import functools

from side_by_side import median_times, print_ratio

import restpg_dspy
from restpg_dspy.serving.generation import SamplingParams, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="local", help="'local' or 'local:<path>'")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    loaded = restpg_dspy.lm(args.model).engine.loaded
    words = " ".join(f"post {i}: a walk with the dog in the cold, then soup for the kids." for i in range(200))
    base = loaded.tokenizer(words)["input_ids"][: args.prompt_tokens - 4]
    distinct = [base + loaded.tokenizer(f" request {i}")["input_ids"][:4] for i in range(args.rows)]
    distinct = [p + [p[-1]] * (args.prompt_tokens - len(p)) for p in distinct]
    batches = {"distinct prompts": distinct, "one prompt": [distinct[0]] * args.rows}
    # Every row generates exactly max_tokens (no end-of-sequence token), so both batches produce the same tokens.
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i) for i in range(args.rows)]

    results = median_times(
        {
            name: functools.partial(generate, loaded.model, loaded.tokenizer, prompts, params, eos_token_ids=set())
            for name, prompts in batches.items()
        },
        args.repeats,
    )

    print(f"model: {loaded.name}  rows: {args.rows}  prompt: {args.prompt_tokens} tokens  new: {args.max_tokens}")
    print_ratio(results, "one prompt", "distinct prompts")


if __name__ == "__main__":
    main()
