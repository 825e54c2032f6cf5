"""Can plain SFT learn the ``implicit_choice`` task? Its option accuracy on *seen* evidence wordings, for a budget.

This is the task's calibration: the task is only a fair test of reasoning if plain fine-tuning can learn the
wordings it was trained on. It compiles SFT (``RAGWriter`` showing the whole profile) on the train split and scores
the val split, whose users all have seen wordings (the test split is not touched), against chance (1/3) and the
ROUGE-L of the template-only policy.

Run: ``.venv/bin/python benchmarks/implicit_choice_sft.py --epochs 3 --lr 1e-3 --run-dir runs/calibration/e3``
(about 20 minutes on 2 CPU cores with the defaults). Re-running reuses the finished compile and evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import restpg_dspy
from restpg_dspy.data import synthetic
from restpg_dspy.data.implicit_choice import OPTIONS_PER_REQUEST, policy_response
from restpg_dspy.evals import evaluate, option_accuracy, rouge_l
from restpg_dspy.evals.report import format_interval
from restpg_dspy.optimizers import SFT
from restpg_dspy.programs import RAGWriter
from restpg_dspy.retrieval import BM25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/calibration")
    parser.add_argument("--train-users", type=int, default=48)
    parser.add_argument("--val-users", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    root = Path(args.run_dir)
    trainset = synthetic("train", seed=0, users=args.train_users)
    valset = synthetic("val", seed=0, users=args.val_users)
    program = RAGWriter(retriever=BM25(k=4))
    program.set_lm(restpg_dspy.lm("local", max_tokens=args.max_tokens, max_batch_size=16))
    train_kwargs = {
        "num_train_epochs": args.epochs,
        "learning_rate": args.lr,
        "r": args.rank,
        "lora_alpha": 2 * args.rank,
        "per_device_train_batch_size": args.batch,
        "max_length": 512,
    }
    start = time.perf_counter()
    compiled = SFT(option_accuracy, run_dir=str(root / "sft"), train_kwargs=train_kwargs).compile(
        program, trainset=trainset
    )
    result = evaluate(compiled, valset, [option_accuracy, rouge_l], cache_dir=root / "cache", progress=False)
    summary = result.summary()
    template = sum(rouge_l(e, policy_response(e, "template")) for e in valset) / len(valset)
    print(f"SFT on {len(trainset)} examples, {json.dumps(train_kwargs)}; {time.perf_counter() - start:.0f} s")
    print(f"val (seen wordings, {len(valset)} examples, {args.val_users} users):")
    print(f"  option_accuracy {format_interval(summary['option_accuracy'], 3)}  (chance {1 / OPTIONS_PER_REQUEST:.3f})")
    print(f"  rouge_l         {format_interval(summary['rouge_l'], 3)}  (template-only {template:.3f})")
    result.to_jsonl(root / "val.predictions.jsonl")
    (root / "summary.json").write_text(json.dumps({"train_kwargs": train_kwargs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
