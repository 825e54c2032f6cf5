"""The E-step's sampling and the M-step's training on a GPU, each against plain transformers / PEFT, side by side.

Made for a lent GPU machine that has torch, transformers, accelerate and peft but neither DSPy nor vLLM: it imports
only ``restpg_dspy.serving.generation`` (the local engine's batched sampler) and ``restpg_dspy.training.trainer``
(the M-step's training process, which needs TRL and datasets: carry their wheels). Every model has random weights
and the shape of ``--model-dir``'s ``config.json`` (the embedded SmolLM2-135M by default), so the numbers measure
the machinery, not text.

Sampling (the E-step's workload: ``--prompts`` prompts of 200-600 tokens, ``--samples`` seeded samples each, exactly
``--new-tokens`` new tokens at temperature 0.7), on the same model with an unmerged LoRA adapter (r 16, every
linear layer) unless said:

- ``engine+adapter``: ``restpg_dspy.serving.generation.generate`` on the PEFT model (today's E-step);
- ``generate+adapter``: ``model.generate`` on the same PEFT model and batch, the reference of the ratios;
- ``engine+merged``: the engine on a copy with the adapter merged into the weights.

Training (the M-step's workload: ``--rows`` rows of ``--row-tokens`` tokens, a quarter of them trained, batch
``--batch``), ``--steps`` optimizer steps after one warm-up step (load and first-step costs subtracted):

- ``fit``: ``restpg_dspy.training.trainer.fit`` (TRL's SFTTrainer with our weighted loss, logits at trained positions);
- ``plain PEFT loop``: AdamW over the LoRA weights, the model's own loss on labels (full logits), the reference.

Prints tokens per second and the ratios. A run of the defaults takes about 3 minutes on an H100.

Run (see the README's "On a GPU"): ``python benchmarks/gpu_estep_mstep.py --model-dir DIR`` where DIR holds
``config.json`` and the tokenizer files. ``--layers 2 --device cpu --dtype float32`` gives a smoke run on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from restpg_dspy.serving import generation
from restpg_dspy.serving.generation import SamplingParams

TEMPERATURE = 0.7


def timed(run: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def lora(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with a fresh LoRA adapter of random, non-zero weights (an adapter that changes what it writes)."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def sampling(model: torch.nn.Module, tokenizer, prompts: list[list[int]], args: argparse.Namespace) -> dict[str, float]:
    """Seconds of each sampling method on the E-step's workload (one warm-up run each, then one timed run)."""
    batch = [prompt for prompt in prompts for _ in range(args.samples)]
    adapted = lora(model, seed=1).eval()
    merged = copy.deepcopy(adapted).merge_and_unload().eval()
    pad = tokenizer.pad_token_id

    def engine(on: torch.nn.Module) -> None:
        params = [
            SamplingParams(max_tokens=args.new_tokens, temperature=TEMPERATURE, seed=i) for i in range(len(batch))
        ]
        completions = generation.generate(on, tokenizer, batch, params, eos_token_ids=set())
        assert all(len(c.token_ids) == args.new_tokens for c in completions)

    def plain_generate() -> None:
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(batch):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        config = GenerationConfig(
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=pad,
        )
        with torch.no_grad():
            out = adapted.generate(
                input_ids=ids.to(args.device), attention_mask=mask.to(args.device), generation_config=config
            )
        assert out.shape[1] == width + args.new_tokens

    methods = {
        "engine+adapter": lambda: engine(adapted),
        "generate+adapter": plain_generate,
        "engine+merged": lambda: engine(merged),
    }
    seconds = {}
    for name, run in methods.items():
        timed(run, args.device)
        seconds[name] = timed(run, args.device)
        tokens = len(batch) * args.new_tokens
        print(f"sampling  {name:17s} {seconds[name]:7.2f} s  {tokens / seconds[name]:9.0f} new tok/s", flush=True)
    return seconds


def training_rows(tokenizer, args: argparse.Namespace) -> list[dict]:
    rng = random.Random(1)
    vocab = len(tokenizer)
    trained = args.row_tokens // 4
    rows = []
    for _ in range(args.rows):
        ids = [rng.randrange(vocab) for _ in range(args.row_tokens)]
        labels = [-100] * (args.row_tokens - trained) + ids[-trained:]
        rows.append({"input_ids": ids, "labels": labels, "weight": 1.0})
    return rows


def training(model_dir: Path, tokenizer, rows: list[dict], args: argparse.Namespace) -> dict[str, float]:
    """Seconds of ``--steps`` optimizer steps of each training method (load and warm-up step subtracted)."""
    from restpg_dspy.training import LoRATrainingConfig, TrainingJobSpec
    from restpg_dspy.training.trainer import fit

    def ours(steps: int) -> None:
        settings = {
            "max_steps": steps,
            "per_device_train_batch_size": args.batch,
            "max_length": args.row_tokens,
            "dtype": args.dtype,
            "save_steps": 0,
            "memory_budget_gib": None,
        }
        with tempfile.TemporaryDirectory() as staging:
            job = TrainingJobSpec(
                str(model_dir), args.device, rows, LoRATrainingConfig.from_kwargs(settings), None, staging
            )
            fit(job, tokenizer=tokenizer)

    def plain(steps: int) -> None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(args.device)
        model = lora(model, seed=0).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        for step in range(steps):
            batch = rows[(step * args.batch) % len(rows) :][: args.batch]
            ids = torch.tensor([r["input_ids"] for r in batch], device=args.device)
            labels = torch.tensor([r["labels"] for r in batch], device=args.device)
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    seconds = {}
    tokens = args.steps * args.batch * args.row_tokens
    for name, run in (("fit", ours), ("plain PEFT loop", plain)):
        warm = timed(lambda run=run: run(1), args.device)
        seconds[name] = timed(lambda run=run: run(1 + args.steps), args.device) - warm
        print(f"training  {name:17s} {seconds[name]:7.2f} s  {tokens / seconds[name]:9.0f} tok/s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="folder with config.json and the tokenizer files")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (smoke runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--row-tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    config = AutoConfig.from_pretrained(args.model_dir)
    if args.layers:
        config.num_hidden_layers = args.layers
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"device: {name}  dtype: {args.dtype}  layers: {config.num_hidden_layers}  hidden: {config.hidden_size}")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)  # the M-step loads its own copy of the base weights, as it does in a run
        tokenizer.save_pretrained(folder)
        rng = random.Random(0)
        prompts = [[rng.randrange(len(tokenizer)) for _ in range(rng.randint(200, 600))] for _ in range(args.prompts)]
        sampled = sampling(model.to(args.device).eval(), tokenizer, prompts, args)
        del model
        trained = training(Path(folder), tokenizer, training_rows(tokenizer, args), args)
    print("\nratios (throughput over the reference):")
    for method in ("engine+adapter", "engine+merged"):
        print(f"sampling  {method:17s} {sampled['generate+adapter'] / sampled[method]:5.2f}x plain generate+adapter")
    print(f"training  {'fit':17s} {trained['plain PEFT loop'] / trained['fit']:5.2f}x the plain PEFT loop")


if __name__ == "__main__":
    main()
