"""Resident memory of a process that fine-tunes several times: trimmed after each training vs not.

Run: ``.venv/bin/python benchmarks/training_memory.py [--model local] [--trainings 2] [--rows 32] [--length 512]``.
Each variant runs in a fresh child process, one after the other (side by side they would share the machine's
memory): it loads the model, then runs ``--trainings`` LoRA fine-tunings through ``lm.finetune`` (DSPy runs each in
a thread of its own, as the optimizer's M-steps do) on rows shaped like the optimizer's (a long prompt, a short
answer). ``untrimmed`` replaces :func:`restpg_dspy.memory.release_memory` by a plain ``gc.collect()``;
``trimmed+mmap`` also sets glibc's ``MALLOC_MMAP_THRESHOLD_`` to 1 MiB, so that large blocks are mapped and unmapped
one by one (a setting for the user's environment, not the library's). Prints each variant's resident memory after
every training, its peak and wall time, and the ratios to ``untrimmed`` (below 1 is less).
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

variant, model, trainings, rows, length = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
if variant == "untrimmed":
    provider.release_memory = gc.collect

def resident_gib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**30

lm = restpg_dspy.lm(model)
tokenizer = lm.engine.loaded.tokenizer
prompt = " ".join(f"Post {i}: a cold walk with the dog, then soup for the kids." for i in range(200))
prompt = tokenizer.decode(tokenizer(prompt)["input_ids"][: length - 100])  # room for the template and answer
data = [
    {"messages": [{"role": "user", "content": f"{prompt}\nRequest {i}: write a short note."},
                  {"role": "assistant", "content": f"Hey folks! Note number {i}, short and warm. Hugs, Zoe"}]}
    for i in range(rows)
]
after = []
with tempfile.TemporaryDirectory() as out:
    for seed in range(trainings):
        settings = {"output_dir": out, "max_steps": 4, "per_device_train_batch_size": 8, "max_length": length,
                    "seed": seed, "save_steps": 0}
        lm.finetune(train_data=data, train_data_format="chat", train_kwargs=settings).result()
        after.append(resident_gib())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"after": after, "peak": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="local", help="'local' or 'local:<path>'")
    parser.add_argument("--trainings", type=int, default=2)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=512, help="tokens per row")
    args = parser.parse_args()

    environments = {
        "untrimmed": {},
        "trimmed": {},
        "trimmed+mmap": {"MALLOC_MMAP_THRESHOLD_": str(2**20)},
    }
    results = {}
    for variant, environment in environments.items():
        sizes = [str(args.trainings), str(args.rows), str(args.length)]
        command = [sys.executable, "-c", CHILD, variant, args.model, *sizes]
        started = time.monotonic()
        finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **environment})
        if finished.returncode != 0:
            raise SystemExit(f"the {variant} run failed:\n{finished.stderr[-3000:]}")
        results[variant] = json.loads(finished.stdout.strip().splitlines()[-1])
        after = "  ".join(f"{gib:.2f}" for gib in results[variant]["after"])
        print(
            f"{variant:>12}: resident after each training (GiB): {after}   peak: {results[variant]['peak']:.2f} GiB"
            f"   {time.monotonic() - started:.0f} s"
        )
    untrimmed = results["untrimmed"]
    for variant in ("trimmed", "trimmed+mmap"):
        last = results[variant]["after"][-1] / untrimmed["after"][-1]
        peak = results[variant]["peak"] / untrimmed["peak"]
        print(f"ratio {variant}/untrimmed: resident after the last training {last:.2f}x, peak {peak:.2f}x")


if __name__ == "__main__":
    main()
