"""The local engine's KV cache: reserved once per batch (the default) vs transformers' DynamicCache, side by side.

Run: ``.venv/bin/python benchmarks/kv_cache.py [--batch 16] [--repeats 1]``.
Decodes one batch of seeded samples with ``restpg_dspy.serving.generation.generate`` on the embedded model, for the
prompt and completion lengths of this project's workloads: the synthetic tasks' E-step (prompts of about 430
tokens, 48 new tokens) and LongLaMP abstracts (prompts of about 1,000 tokens, the first 160 of their 320 new
tokens). Each batch samples ``--batch // 4`` prompts four times each, as an E-step does (one shared prefill per
prompt). Prints each cache's median time, the ratio dynamic / reserved (above 1: the reserved cache is faster) and
whether the two wrote the same tokens.
"""

import argparse
import functools
import random

from side_by_side import median_times

from restpg_dspy.serving.generation import SamplingParams, generate
from restpg_dspy.serving.models import embedded_model_path, load_causal_lm, load_tokenizer

WORKLOADS = {"synthetic E-step": (430, 48), "LongLaMP abstract": (1000, 160)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    path = embedded_model_path()
    model, tokenizer = load_causal_lm(path, "float32", "cpu").eval(), load_tokenizer(path)
    words = random.Random(0)
    for name, (prompt_tokens, new_tokens) in WORKLOADS.items():
        distinct = [[words.randrange(100, 40000) for _ in range(prompt_tokens)] for _ in range(args.batch // 4)]
        prompts = [prompt for prompt in distinct for _ in range(4)]
        # No end-of-sequence token: every row decodes its whole budget, as a rambling sample does.
        params = [SamplingParams(max_tokens=new_tokens, temperature=0.7, seed=row) for row in range(len(prompts))]
        run = functools.partial(generate, model, tokenizer, prompts, params, set())
        results = median_times(
            {cache: functools.partial(run, kv_cache=cache) for cache in ("dynamic", "reserved")}, args.repeats
        )
        (dynamic, dynamic_rows), (reserved, reserved_rows) = results["dynamic"], results["reserved"]
        same = [a.token_ids for a in dynamic_rows] == [b.token_ids for b in reserved_rows]
        print(
            f"{name} ({len(prompts)} rows, {prompt_tokens}-token prompts, {new_tokens} new tokens): dynamic "
            f"{dynamic:.1f} s, reserved {reserved:.1f} s, ratio {dynamic / reserved:.2f}, same tokens: {same}"
        )


if __name__ == "__main__":
    main()
