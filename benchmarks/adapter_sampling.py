"""Sampling with a freshly trained adapter: the local engine's former default vs other samplers.

Run: ``.venv/bin/python benchmarks/adapter_sampling.py [--inputs 12] [--samples 4] [--max-tokens 48] [--vllm]
[--only NAME ...]``.
Two workloads, both a real ``PersonalizedWriter`` (a reasoning step, then a response step) on synthetic users, served
by an adapter that ``lm.finetune`` has just trained on them:

- the E-step: ``--samples`` seeded samples per input at temperature 0.7, from 16 threads (``RESTPG``'s default);
- the evaluation: one greedy prediction per input, from 16 threads (``restpg table``'s default).

Candidates run alternately in one process (machine noise hits them alike); each prints generated tokens per second,
how many rows shared a decoding step on average (``row_steps / steps`` in the engine's stats), and its ratio to the
former default (adapter unmerged, batches of up to 16 rows, transformers' KV cache, which copies itself at every
decoding step). A candidate's responses are compared with the former default's word for word.
Candidates, on the local engine: as it now is by default (a KV cache reserved once per batch); with the adapter
merged into a copy of the weights (``merged_adapters=1``); with larger batches (``max_batch_size`` 64, 64 threads);
merged with batches of 64; the default and merged-with-64 with continuous batching (``batching="continuous"``:
requests join a decoding batch between steps); merged with batches of 64 in bfloat16 (AMX reads bfloat16 matrices at
several times float32's rate; other numerics, so other outputs); and with ``--vllm``, vLLM serving the adapter and
vLLM on merged weights.
One more run, prefill alone, replays the former default's recorded calls for one token each (each prompt read, one
token written): its time as a share of the former default's says how much of the workload faster decoding cannot
remove.
"""

import argparse
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dspy.clients.base_lm import GLOBAL_HISTORY
from dspy.lm15 import Config, Message, Request
from side_by_side import median_times

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.retrieval import BM25

BASELINE = "former default: dynamic KV cache"
PREFILL = "prefill alone"


def run_program(lm, examples, samples: int, threads: int) -> tuple[int, list[str], str]:
    """Run the program ``samples`` times per example (seeded when sampling); return tokens generated, responses and
    how many rows shared each of the engine's decoding steps on average."""
    engine = lm.engine
    before = dict(engine.stats)
    program = PersonalizedWriter(retriever=BM25(k=2))

    def draw(job):
        example, index = job
        copy = program.deepcopy()
        copy.set_lm(lm.copy(seed=index, rollout_id=index) if samples > 1 else lm)
        return copy(**example.inputs()).response

    with ThreadPoolExecutor(threads) as pool:
        responses = list(pool.map(draw, [(e, i) for e in examples for i in range(samples)]))
    done = {name: engine.stats[name] - before[name] for name in engine.stats}
    if "row_steps" not in done:  # vLLM schedules its own steps
        return done["generated_tokens"], responses, "  - rows/step"
    return done["generated_tokens"], responses, f"{done['row_steps'] / max(1, done['steps']):4.1f} rows/step"


def recording_calls(run, calls: list[list[dict]]) -> tuple[int, list[str], str]:
    """Run ``run`` and keep in ``calls`` the messages of every LM call it made (DSPy's history records them)."""
    start = len(GLOBAL_HISTORY)
    result = run()
    calls[:] = [entry["messages"] for entry in GLOBAL_HISTORY[start:]]
    return result


def one_token_request(model: str, messages: list[dict]) -> Request:
    """The recorded chat ``messages`` (text only, as DSPy's adapters write them) as a request for one token."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [m for m in messages if m["role"] != "system"]
    speak = {"user": Message.user, "assistant": Message.assistant}
    return Request(
        model=model,
        messages=tuple(speak[m["role"]](m["content"]) for m in turns),
        system=system,
        config=Config(max_tokens=1),
    )


def replay_prefill(lm, calls: list[list[dict]], threads: int) -> tuple[int, list[str], str]:
    """Send every recorded call again for one token: each prompt is read in full, nearly nothing is written."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda messages: lm(one_token_request(lm.model, messages)), calls))
    return 0, [], ""


def train_adapter(examples, steps: int) -> Path:
    """A rank-16 all-linear LoRA adapter trained for ``steps`` steps on the examples' prompts and outputs."""
    rows = [
        {"messages": [{"role": "user", "content": e.request}, {"role": "assistant", "content": e.output}]}
        for e in examples
    ]
    folder = tempfile.mkdtemp(prefix="bench-adapter-")
    settings = {"output_dir": folder, "max_steps": steps, "per_device_train_batch_size": 8, "learning_rate": 2e-3}
    job = restpg_dspy.lm("local").finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    job.result()
    return Path(job.log["adapter"])


def merged_folder(adapter: Path) -> Path:
    """The embedded model with ``adapter`` merged in, saved as a model folder (for vLLM)."""
    from peft import PeftModel

    from restpg_dspy.serving.models import embedded_model_path, load_causal_lm, load_tokenizer

    base = embedded_model_path()
    folder = Path(tempfile.mkdtemp(prefix="bench-merged-"))
    merged = PeftModel.from_pretrained(load_causal_lm(base, "float32", "cpu"), adapter).merge_and_unload()
    merged.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vllm", action="store_true", help="also vLLM with the adapter and vLLM on merged weights")
    parser.add_argument(
        "--only", action="append", help="a candidate to run beside the former default (repeatable; default: all)"
    )
    args = parser.parse_args()

    examples = synthetic("train", seed=0, users=args.inputs, requests_per_user=1)[: args.inputs]
    adapter = train_adapter(examples, args.train_steps)
    settings = {"max_tokens": args.max_tokens, "cache": False}
    candidates = {
        BASELINE: (restpg_dspy.lm("local", adapter=adapter, kv_cache="dynamic", **settings), 16),
        "local, unmerged, batch 16": (restpg_dspy.lm("local", adapter=adapter, **settings), 16),
        "local, merged, batch 16": (restpg_dspy.lm("local", adapter=adapter, merged_adapters=1, **settings), 16),
        "local, unmerged, batch 64": (restpg_dspy.lm("local", adapter=adapter, max_batch_size=64, **settings), 64),
        "local, merged, batch 64": (
            restpg_dspy.lm("local", adapter=adapter, merged_adapters=1, max_batch_size=64, **settings),
            64,
        ),
        "local, unmerged, batch 16, continuous": (
            restpg_dspy.lm("local", adapter=adapter, batching="continuous", **settings),
            16,
        ),
        "local, merged, batch 64, continuous": (
            restpg_dspy.lm(
                "local", adapter=adapter, merged_adapters=1, max_batch_size=64, batching="continuous", **settings
            ),
            64,
        ),
        # Other numerics, so other outputs: only ever opt-in, whatever its speed.
        "local, merged, batch 64, bfloat16": (
            restpg_dspy.lm(
                "local", adapter=adapter, merged_adapters=1, max_batch_size=64, dtype="bfloat16", **settings
            ),
            64,
        ),
    }
    if args.vllm:
        vllm = {"kv_cache_gib": 1, "max_model_len": 2048, **settings}
        candidates["vLLM, adapter"] = (restpg_dspy.lm("vllm:local", adapter=adapter, **vllm), 64)
        candidates["vLLM, merged weights"] = (restpg_dspy.lm(f"vllm:{merged_folder(adapter)}", **vllm), 64)
    candidates[PREFILL] = (candidates[BASELINE][0], 16)
    if args.only:
        wanted = {BASELINE, *args.only}
        if unknown := wanted - set(candidates):
            parser.error(f"--only: unknown candidates {sorted(unknown)}; known: {sorted(candidates)}")
        candidates = {name: value for name, value in candidates.items() if name in wanted}
    print(
        f"adapter {adapter.name}; {len(examples)} inputs, max_tokens {args.max_tokens}; "
        f"E-step: {args.samples} samples per input at temperature 0.7; evaluation: greedy"
    )
    for workload, samples, temperature in (("E-step", args.samples, 0.7), ("evaluation", 1, 0.0)):
        calls: list[list[dict]] = []  # the messages of the former default's last run, which the prefill probe replays
        variants = {
            name: functools.partial(
                run_program, lm.copy(temperature=temperature), examples, samples=samples, threads=threads
            )
            for name, (lm, threads) in candidates.items()
        }
        variants[BASELINE] = functools.partial(recording_calls, variants[BASELINE], calls)
        if PREFILL in variants:
            variants[PREFILL] = functools.partial(
                replay_prefill, candidates[PREFILL][0].copy(temperature=temperature), calls, threads=16
            )
        results = median_times(variants, args.repeats)
        base_seconds, (base_tokens, base_responses, _) = results[BASELINE]
        print(f"\n{workload}")
        for name, (seconds, (tokens, responses, batches)) in results.items():
            if name == PREFILL:
                print(f"{name:33s} {seconds:7.1f} s: {seconds / base_seconds:.0%} of the former default's time")
                continue
            ratio = (tokens / seconds) / (base_tokens / base_seconds)
            same = sum(a == b for a, b in zip(responses, base_responses, strict=True))
            print(
                f"{name:33s} {seconds:7.1f} s {tokens:6d} tokens {tokens / seconds:7.1f} tokens/s  "
                f"ratio {ratio:4.2f}  {batches}  responses as the former default's: "
                f"{same}/{len(responses)}"
            )


if __name__ == "__main__":
    main()
