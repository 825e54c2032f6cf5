"""Resident memory of LoRA fine-tuning: trimmed after each training vs not, or gradient checkpointing on vs off
against the memory plan's estimate.

Run: ``.venv/bin/python benchmarks/training_memory.py [--vary trimming|checkpointing] [--model local]
[--trainings 2] [--rows 32] [--length 512] [--dtype float32] [--steps 4]``.
Each variant runs in a fresh child process, one after the other (side by side they would share the machine's
memory): it loads the model, then runs ``--trainings`` LoRA fine-tunings through ``lm.finetune`` (DSPy runs each in
a thread of its own, as the optimizer's M-steps do) on rows shaped like the optimizer's (a long prompt, a short
answer), batches of 8, ``--steps`` steps each. Prints each variant's resident memory after every
training, its peak and wall time, and the ratios to the baseline (below 1 is less).

``--vary trimming``: ``untrimmed`` replaces :func:`restpg_dspy.memory.release_memory` by a plain ``gc.collect()``;
``trimmed+mmap`` also sets glibc's ``MALLOC_MMAP_THRESHOLD_`` to 1 MiB, so that large blocks are mapped and unmapped
one by one (a setting for the user's environment, not the library's).

``--vary checkpointing``: one training with gradient checkpointing and one without (the memory plan off, no LoRA
dropout), the base weights in ``--dtype``; each peak is
printed beside :func:`restpg_dspy.training.memory_plan.estimate_gib` for the same rows (an estimate below the
measured peak would let a planned training outgrow its budget).
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import gc, json, resource, sys, tempfile
import restpg_dspy, restpg_dspy.training.provider as provider
from restpg_dspy.training.data import tokenize_rows
from restpg_dspy.training.memory_plan import estimate_gib

variant, model, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if variant == "untrimmed":
    provider.release_memory = gc.collect

def resident_gib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**30

lm = restpg_dspy.lm(model)
loaded = lm.engine.loaded
tokenizer = loaded.tokenizer
length = options["length"]
prompt = " ".join(f"Post {i}: a cold walk with the dog, then soup for the kids." for i in range(200))
prompt = tokenizer.decode(tokenizer(prompt)["input_ids"][: length - 100])  # room for the template and answer
data = [
    {"messages": [{"role": "user", "content": f"{prompt}\nRequest {i}: write a short note."},
                  {"role": "assistant", "content": f"Hey folks! Note number {i}, short and warm. Hugs, Zoe"}]}
    for i in range(options["rows"])
]
rows, _ = tokenize_rows(tokenizer, data, length)
longest = max(len(r.input_ids) for r in rows)
firsts = [next(i for i, label in enumerate(r.labels) if label != -100) for r in rows]
estimate = estimate_gib(
    loaded.model.config,
    parameters=sum(p.numel() for p in loaded.model.parameters()),
    rows=8,
    longest_row=longest,
    trained_tokens=longest - min(firsts),
    checkpointing=variant == "checkpointing",
    dtype=options["dtype"],
)
after = []
with tempfile.TemporaryDirectory() as out:
    for seed in range(options["trainings"]):
        settings = {"output_dir": out, "max_steps": options["steps"], "per_device_train_batch_size": 8,
                    "max_length": length, "seed": seed, "save_steps": 0}
        if variant.endswith("checkpointing"):  # the plan's two choices, measured against its estimate
            settings.update(dtype=options["dtype"], lora_dropout=0.0, memory_budget_gib=None,
                            gradient_checkpointing=variant == "checkpointing")
        lm.finetune(train_data=data, train_data_format="chat", train_kwargs=settings).result()
        after.append(resident_gib())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"after": after, "peak": peak, "estimate": estimate}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vary", choices=("trimming", "checkpointing"), default="trimming")
    parser.add_argument("--model", default="local", help="'local' or 'local:<path>'")
    parser.add_argument("--trainings", type=int, default=2)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=512, help="tokens per row")
    parser.add_argument("--dtype", default="float32", help="the base weights' dtype while training")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per training")
    args = parser.parse_args()

    if args.vary == "trimming":
        environments = {"untrimmed": {}, "trimmed": {}, "trimmed+mmap": {"MALLOC_MMAP_THRESHOLD_": str(2**20)}}
    else:
        environments = {"checkpointing": {}, "no checkpointing": {}}
    options = {key: getattr(args, key) for key in ("trainings", "rows", "length", "dtype", "steps")}
    results = {}
    for variant, environment in environments.items():
        command = [sys.executable, "-c", CHILD, variant, args.model, json.dumps(options)]
        started = time.monotonic()
        finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **environment})
        if finished.returncode != 0:
            raise SystemExit(f"the {variant} run failed:\n{finished.stderr[-3000:]}")
        results[variant] = json.loads(finished.stdout.strip().splitlines()[-1])
        results[variant]["seconds"] = time.monotonic() - started
        after = "  ".join(f"{gib:.2f}" for gib in results[variant]["after"])
        estimate = f"   estimated peak: {results[variant]['estimate']:.2f} GiB" if args.vary == "checkpointing" else ""
        print(
            f"{variant:>16}: resident after each training (GiB): {after}   peak: {results[variant]['peak']:.2f} GiB"
            f"{estimate}   {results[variant]['seconds']:.0f} s"
        )
    baseline, *candidates = environments
    for variant in candidates:
        last = results[variant]["after"][-1] / results[baseline]["after"][-1]
        peak = results[variant]["peak"] / results[baseline]["peak"]
        seconds = results[variant]["seconds"] / results[baseline]["seconds"]
        print(
            f"ratio {variant}/{baseline}: resident after the last training {last:.2f}x, peak {peak:.2f}x, "
            f"time {seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
