"""LoRA training under glibc's malloc vs jemalloc: the same M-step-shaped training in fresh processes, side by side.

Run: ``.venv/bin/python benchmarks/allocator.py [--steps 3] [--rounds 2] [--batch 8]``.
A training step frees and re-allocates tensors of hundreds of MB (activations, logits, gradients). glibc serves every
block over 32 MB with a fresh ``mmap``, so each step faults its pages in again from the kernel (seen at about 130,000
page faults a second, 40% of the CPU time in the kernel); jemalloc keeps freed pages for reuse. The allocator is
chosen when a process starts, so each variant trains in a fresh process of its own (``LD_PRELOAD``), the variants
alternating round by round so machine noise hits them alike. Each prints the training's wall time (the provider's
``runtime_s``: steps only, no model loading), its minor page faults and peak resident memory, and the ratio of each
variant's median time to glibc's (below 1: faster). Rows are shaped like the selection experiment's: a profile of
four posts and a request in the prompt, the user's answer as the trained part.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

from restpg_dspy.allocator import JEMALLOC_CONF, find_jemalloc


def train(steps: int, batch: int) -> dict:
    """Train ``steps`` LoRA steps on synthetic rows in this process; return its time, page faults and peak memory."""
    import restpg_dspy
    from restpg_dspy.data import synthetic

    examples = synthetic("train", seed=0, task="implicit_choice_v2")
    rows = [
        {
            "messages": [
                {"role": "user", "content": "\n".join(p["text"] for p in e.profile[:4]) + "\n\n" + e.request},
                {"role": "assistant", "content": e.output},
            ]
        }
        for e in examples[: steps * batch]
    ]
    settings = {
        "output_dir": tempfile.mkdtemp(prefix="bench-allocator-"),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 2e-3,
        "save_steps": 0,
        "memory_budget_gib": None,
    }
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    job = restpg_dspy.lm("local").finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    job.result()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": job.log["runtime_s"],
        "faults": usage.ru_minflt - faults_before,
        "peak_gib": usage.ru_maxrss / 2**20,
        "loss": job.log["losses"][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train(args.steps, args.batch)))
        return

    jemalloc = find_jemalloc()
    if jemalloc is None:
        sys.exit("no libjemalloc found (Debian: apt-get install libjemalloc2; make setup installs it)")
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "RESTPG_ALLOCATOR")}
    variants = {
        "glibc": base,
        "jemalloc, its defaults": {**base, "LD_PRELOAD": jemalloc},
        "jemalloc, restpg's": {**base, "LD_PRELOAD": jemalloc, "MALLOC_CONF": JEMALLOC_CONF},
    }
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch", str(args.batch)]
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, env in variants.items():
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)

    print(f"\n{args.steps} steps of batch {args.batch}, {args.rounds} runs per variant (medians):")
    baseline = statistics.median(r["seconds"] for r in runs["glibc"])
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        faults = statistics.median(r["faults"] for r in results)
        peak = max(r["peak_gib"] for r in results)
        print(
            f"{name:24s} {seconds:7.1f} s  {faults / 1e6:6.2f} M page faults  peak {peak:5.2f} GiB"
            f"  ratio to glibc {seconds / baseline:.2f}"
        )


if __name__ == "__main__":
    main()
