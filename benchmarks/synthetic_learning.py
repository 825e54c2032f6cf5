"""Does REST-PG learn? Compile SFT, ReST-EM and REST-PG on the offline synthetic benchmark and score held-out users.

Run: ``.venv/bin/python benchmarks/synthetic_learning.py --run-dir runs/learning`` (about half an hour on 2 CPU
cores with the defaults). Prints ROUGE-L on the test users, mean with a 95% bootstrap interval, for the
uncompiled PersonalizedWriter, SFT (RAGWriter), ReST-EM (RAGWriter) and REST-PG (PersonalizedWriter), and writes
``results.json`` in the run directory. Re-running reuses every finished stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.evals import bootstrap_interval, evaluate, rouge_l
from restpg_dspy.optimizers import RESTPG, SFT, ReSTEM
from restpg_dspy.programs import PersonalizedWriter, RAGWriter
from restpg_dspy.retrieval import BM25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/learning")
    parser.add_argument("--train-users", type=int, default=12)
    parser.add_argument("--test-users", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--methods", default="uncompiled,sft,rest-em,rest-pg")
    args = parser.parse_args()

    root = Path(args.run_dir)
    lm = restpg_dspy.lm("local", max_tokens=args.max_tokens, max_batch_size=32)
    trainset = synthetic("train", seed=0, users=args.train_users)
    testset = synthetic("test", seed=0, users=args.test_users)
    common = {
        "samples_per_input": args.samples,
        "rounds": args.rounds,
        "num_threads": args.threads,
        "train_kwargs": {
            "num_train_epochs": args.epochs,
            "learning_rate": args.lr,
            "per_device_train_batch_size": 8,
            "max_length": 768,
        },
    }

    def program(kind):
        built = PersonalizedWriter(retriever=BM25(k=2)) if kind == "writer" else RAGWriter(retriever=BM25(k=2))
        built.set_lm(lm)
        return built

    methods = {
        "uncompiled": lambda: program("writer"),
        "sft": lambda: SFT(**common, run_dir=str(root / "sft")).compile(program("rag"), trainset=trainset),
        "rest-em": lambda: ReSTEM(**common, run_dir=str(root / "rest-em")).compile(program("rag"), trainset=trainset),
        "rest-pg": lambda: RESTPG(**common, run_dir=str(root / "rest-pg")).compile(
            program("writer"), trainset=trainset
        ),
    }
    results = {}
    for name in args.methods.split(","):
        start = time.perf_counter()
        compiled = methods[name]()
        result = evaluate(compiled, testset, [rouge_l], num_threads=args.threads, progress=False)
        scores = [row.get("rouge_l", 0.0) for row in result.rows]
        mean, (low, high) = statistics.fmean(scores), bootstrap_interval(scores)
        results[name] = {
            "rouge_l": mean,
            "ci95": [low, high],
            "seconds": round(time.perf_counter() - start, 1),
            "history": getattr(compiled, "restpg_history", None),
            "scores": scores,
        }
        print(f"{name:11s} ROUGE-L {mean:.4f} [{low:.4f}, {high:.4f}]  ({results[name]['seconds']} s)", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntest examples: {len(testset)}; train examples: {len(trainset)}; median test ROUGE-L per method:")
    for name, result in results.items():
        print(f"  {name:11s} {statistics.median(result['scores']):.4f}")


if __name__ == "__main__":
    main()
