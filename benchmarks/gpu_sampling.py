"""Batched sampling throughput on a GPU: the local engine's ``generate`` vs plain ``model.generate``, side by side.

Every method decodes the same prompts (random token ids of 64-256 tokens) for exactly ``--new-tokens`` tokens at
temperature 0.7 on a randomly initialised model of the embedded model's architecture (SmolLM2-135M), so the
numbers measure decoding machinery, not text. Methods:

- ``engine``: :func:`restpg_dspy.serving.generation.generate` (per-row seeds, rows leave the batch when done);
- ``generate``: ``model.generate`` on the same left-padded batch (dynamic KV cache), the reference of the ratios;
- ``generate+static``: ``model.generate`` with a static KV cache, which transformers compiles (CUDA graphs);
- ``generate_batch``: transformers' continuous batching (paged attention);
- ``generate x1``: ``model.generate`` one request at a time, on a few requests, for scale.

It also splits the engine's time between model forwards and choosing tokens.

Run: ``python benchmarks/gpu_sampling.py --model-dir DIR [--batches 64 256] [--new-tokens 128]`` where DIR holds a
``config.json`` and tokenizer files (the embedded model's folder under ``restpg_dspy.serving.models.home()`` does).
``--layers 2 --device cpu`` gives a quick smoke run on a CPU.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from restpg_dspy.serving import decoding, generation
from restpg_dspy.serving.generation import SamplingParams

TEMPERATURE = 0.7


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def left_padded(prompts: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def sampling_config(new_tokens: int, **extra: object) -> GenerationConfig:
    return GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        **extra,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="folder with config.json and the tokenizer files")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (smoke runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--methods", nargs="+", default=["engine", "generate", "generate+static", "generate_batch"])
    args = parser.parse_args()

    config = AutoConfig.from_pretrained(args.model_dir)
    if args.layers:
        config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token_id = pad_id
    rng = random.Random(0)
    vocab = min(config.vocab_size, len(tokenizer))
    all_prompts = [[rng.randrange(vocab) for _ in range(rng.randint(64, 256))] for _ in range(max(args.batches))]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"device: {name}  dtype: {args.dtype}  layers: {config.num_hidden_layers}  new tokens: {args.new_tokens}")

    def run_engine(prompts: list[list[int]], new_tokens: int) -> None:
        params = [SamplingParams(max_tokens=new_tokens, temperature=TEMPERATURE, seed=i) for i in range(len(prompts))]
        completions = generation.generate(model, tokenizer, prompts, params, eos_token_ids=set())
        assert all(len(c.token_ids) == new_tokens for c in completions)

    def run_generate(prompts: list[list[int]], new_tokens: int, **extra: object) -> None:
        ids, mask = left_padded(prompts, pad_id, args.device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=sampling_config(new_tokens, **extra))
        assert out.shape[1] == ids.shape[1] + new_tokens

    def run_generate_batch(prompts: list[list[int]], new_tokens: int) -> None:
        outputs = model.generate_batch(inputs=prompts, generation_config=sampling_config(new_tokens))
        assert len(outputs) == len(prompts)

    methods: dict[str, Callable[[list[list[int]], int], None]] = {
        "engine": run_engine,
        "generate": run_generate,
        "generate+static": lambda p, n: run_generate(p, n, cache_implementation="static"),
        "generate_batch": run_generate_batch,
    }
    rows: list[tuple[int, str, float]] = []
    for batch in args.batches:
        prompts = all_prompts[:batch]
        tokens = batch * args.new_tokens
        for method in args.methods:
            try:
                run = functools.partial(methods[method], prompts, args.new_tokens)
                warm, seconds = timed(run, args.device), timed(run, args.device)
            except Exception as err:  # a reference path missing from this transformers build is reported, not fatal
                print(f"batch {batch:4d}  {method:16s} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                continue
            rows.append((batch, method, seconds))
            print(
                f"batch {batch:4d}  {method:16s} {seconds:7.2f} s  {tokens / seconds:9.0f} tok/s  "
                f"(first run {warm:.2f} s)",
                flush=True,
            )

    if "engine" in args.methods:
        spent = {"choose": 0.0}
        choose = decoding.choose_tokens

        def timed_choose(*a: object, **k: object) -> list[int]:
            synchronize(args.device)
            start = time.perf_counter()
            chosen = choose(*a, **k)
            spent["choose"] += time.perf_counter() - start
            return chosen

        decoding.choose_tokens = timed_choose
        batch = max(args.batches)
        total = timed(lambda: run_engine(all_prompts[:batch], args.new_tokens), args.device)
        decoding.choose_tokens = choose
        print(f"engine at batch {batch}: {total:.2f} s, of which choosing tokens {spent['choose']:.2f} s")

    few = all_prompts[:4]
    single = timed(lambda: [run_generate([p], args.new_tokens) for p in few], args.device)
    print(f"generate x1 (4 requests one at a time): {len(few) * args.new_tokens / single:9.0f} tok/s")

    print("\nratios (tok/s over plain generate at the same batch):")
    reference = {b: s for b, m, s in rows if m == "generate"}
    for batch, method, seconds in rows:
        if batch in reference:
            print(f"batch {batch:4d}  {method:16s} {reference[batch] / seconds:5.2f}x")


if __name__ == "__main__":
    main()
