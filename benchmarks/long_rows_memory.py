"""Peak resident memory of one LoRA fine-tune on long rows (8 rows of about 1,024 tokens), side by side in one run:
as before (no memory plan, glibc's dynamic mmap threshold), with the plan alone (its default 8 GiB budget), and with
today's defaults (the plan, and the mmap threshold held at 1 MiB: see ``restpg_dspy.memory``).

Run: ``.venv/bin/python benchmarks/long_rows_memory.py [--model local] [--rows 8] [--length 1024] [--steps 2]
[--cap-gib 20]``. Each variant runs in a fresh child process, one after the other (side by side they would share the
machine's memory): it loads the model and runs ``--steps`` optimizer steps of batch ``--rows`` through
``lm.finetune`` on rows shaped like LongLaMP's (a long profile prompt, an abstract-length answer of about a quarter
of the row). A watchdog stops a child whose resident memory passes ``--cap-gib`` (instead of the kernel's
out-of-memory killer stopping the machine's other work) and reports that it did. Prints each variant's peak resident
memory, its plan and wall time, and the ratio of the peaks to the first's (below 1 is less).
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, resource, sys, tempfile, threading, time
import restpg_dspy

variant, model, rows, length, steps, cap = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), float(sys.argv[6])

def resident_gib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**30

def watchdog():
    while True:
        if resident_gib() > cap:
            print(json.dumps({"stopped_at_gib": round(resident_gib(), 2)}), flush=True)
            os._exit(3)
        time.sleep(0.05)

threading.Thread(target=watchdog, daemon=True).start()
lm = restpg_dspy.lm(model)
tokenizer = lm.engine.loaded.tokenizer
words = "profile post about sparse codes for speech recognition graphs search results method data".split()
def text(tokens, seed):
    filler = " ".join(words[(seed * 7 + i * 3) % len(words)] + str(i % 97) for i in range(tokens))
    return tokenizer.decode(tokenizer(filler)["input_ids"][:tokens])
answer_tokens = length // 4
data = [
    {"messages": [{"role": "user", "content": text(length - answer_tokens - 40, i)},
                  {"role": "assistant", "content": text(answer_tokens, i + 1)}]}
    for i in range(rows)
]
budget = None if variant == "before" else 8.0
settings = {"per_device_train_batch_size": rows, "max_steps": steps, "max_length": length + 64,
            "memory_budget_gib": budget, "save_steps": 0, "output_dir": tempfile.mkdtemp()}
start = time.perf_counter()
job = lm.finetune(train_data=data, train_data_format="chat", train_kwargs=settings)
job.result()
print(json.dumps({
    "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    "plan": job.log["memory_plan"], "tokens_per_row": job.log["total_tokens"] // rows,
    "seconds": round(time.perf_counter() - start, 1),
}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="local")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=20.0)
    args = parser.parse_args()
    # Each variant: does it plan, and does it keep glibc's dynamic mmap threshold?
    variants = {"before": True, "plan alone": True, "defaults": False}
    results = {}
    for variant, dynamic_malloc in variants.items():
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "RESTPG_DSPY_DYNAMIC_MALLOC")}
        if dynamic_malloc:
            env["RESTPG_DSPY_DYNAMIC_MALLOC"] = "1"
        started = time.perf_counter()
        command = [sys.executable, "-c", CHILD, variant, args.model]
        command += [str(args.rows), str(args.length), str(args.steps), str(args.cap_gib)]
        finished = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"{variant}: the child failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
        results[variant] = {**json.loads(lines[-1]), "wall_s": round(time.perf_counter() - started, 1)}
        print(f"{variant:10s} {results[variant]}", flush=True)
    first = results["before"].get("peak_gib", results["before"].get("stopped_at_gib"))
    for variant, result in results.items():
        peak = result.get("peak_gib", result.get("stopped_at_gib"))
        stopped = f" (stopped at the {args.cap_gib:g} GiB cap: at least this)" if "stopped_at_gib" in result else ""
        print(f"peak resident memory, {variant}: {peak} GiB{stopped}; ratio to before: {peak / first:.2f}")


if __name__ == "__main__":
    main()
