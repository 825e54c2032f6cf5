"""E-step sampling through vLLM vs the local engine, and vLLM with a LoRA adapter served vs its base weights.

Run: ``.venv/bin/python benchmarks/vllm_sampling.py [--model local] [--inputs 16] [--samples 8] [--max-tokens 48]``.
The workload is REST-PG's E-step: a real ``PersonalizedWriter`` (a reasoning step, then a response step) run on
``--inputs`` synthetic users, ``--samples`` seeded samples each, from 32 threads, so each engine batches as it would
in ``RESTPG.compile``. Variants alternate in one process (machine noise hits them alike). Samples differ between
engines, and so do their lengths: the ratios compare generated tokens per second (above 1: the first is faster).
"""

import argparse
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from side_by_side import median_times

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.retrieval import BM25


def e_step(lm, examples, samples: int) -> int:
    """Draw ``samples`` seeded (reasoning, response) samples per example; return the tokens generated."""
    engine = lm.engine
    before = engine.stats["generated_tokens"]
    program = PersonalizedWriter(retriever=BM25(k=2))

    def draw(job):
        example, index = job
        seeded = lm.copy(temperature=0.7, seed=index, rollout_id=index)
        copy = program.deepcopy()
        copy.set_lm(seeded)
        return copy(**example.inputs())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(draw, [(e, i) for e in examples for i in range(samples)]))
    return engine.stats["generated_tokens"] - before


def random_adapter(model_path: Path, folder: Path) -> Path:
    """A rank-16 all-linear LoRA adapter with random weights, as an M-step leaves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False)).save_pretrained(folder)
    return folder


def report(results, candidate: str, baseline: str) -> None:
    for name, (seconds, tokens) in results.items():
        print(f"{name:22s} median {seconds:7.2f} s  {tokens:6d} tokens  {tokens / seconds:7.1f} tokens/s")
    speed = {name: tokens / seconds for name, (seconds, tokens) in results.items()}
    print(f"ratio tokens/s {candidate} / {baseline}: {speed[candidate] / speed[baseline]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="local", help="'local' or a model folder")
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    args = parser.parse_args()

    examples = synthetic("train", seed=0, users=args.inputs, requests_per_user=1)[: args.inputs]
    settings = {"max_tokens": args.max_tokens, "cache": False}
    local = restpg_dspy.lm(f"local:{args.model}" if args.model != "local" else "local", max_batch_size=64, **settings)
    vllm = restpg_dspy.lm(f"vllm:{args.model}", kv_cache_gib=args.kv_cache_gib, max_model_len=2048, **settings)
    adapter = random_adapter(vllm.engine.path, Path(tempfile.mkdtemp(prefix="bench-adapter-")))
    served = vllm.copy(model=vllm.engine.register_adapter(adapter))
    print(f"E-step: {len(examples)} inputs x {args.samples} samples x 2 steps, max_tokens {args.max_tokens}")

    run = functools.partial(e_step, examples=examples, samples=args.samples)
    results = median_times(
        {"local engine": functools.partial(run, local), "vLLM": functools.partial(run, vllm)}, args.repeats
    )
    report(results, "vLLM", "local engine")
    results = median_times(
        {"vLLM base": functools.partial(run, vllm), "vLLM LoRA (served)": functools.partial(run, served)}, args.repeats
    )
    report(results, "vLLM LoRA (served)", "vLLM base")


if __name__ == "__main__":
    main()
