"""Repetition controls on LongLaMP abstracts: choose the task's defaults on its training records, then compare the
loop rate of greedy decoding without and with them on its test records, side by side in one run.

Run: ``.venv/bin/python benchmarks/repetition_controls.py --split train`` (the choice), then ``--split test`` (the
comparison). Both use the shared sample (``../shared/data/longlamp_abstract_sample.jsonl``, split by the hash of
record ids) unless ``--data`` names another file, the embedded model, greedy decoding with a 320-token budget and
``RAGWriter`` (BM25, k 2): the setting where the model loops most. Every prediction goes through the evaluation cache
(``runs/repetition-controls``), so a rerun costs nothing.

The rule, fixed before the first run: on the training records, try repetition_penalty 1.0, 1.1, 1.2, 1.3 each with
no_repeat_ngram_size 0 and 4; among the settings whose loop rate is at most 0.10, keep the one with the highest mean
ROUGE-L (ties: the smaller penalty, then no n-gram ban); if none, the lowest loop rate (ties: higher ROUGE-L). The
test split is only ever scored with no controls and with the chosen defaults (``TASKS["abstract_generation"]``).
"""

import argparse
import itertools
from pathlib import Path

LOOP_TARGET = 0.10
GRID = list(itertools.product((1.0, 1.1, 1.2, 1.3), (0, 4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("train", "test"), required=True)
    parser.add_argument("--data", default="../shared/data/longlamp_abstract_sample.jsonl")
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--cache", default="runs/repetition-controls")
    args = parser.parse_args()

    import restpg_dspy
    from restpg_dspy.data import load_longlamp
    from restpg_dspy.evals import evaluate, loop_rate, rouge_1, rouge_l
    from restpg_dspy.programs import RAGWriter
    from restpg_dspy.retrieval import BM25
    from restpg_dspy.tasks import TASKS

    examples = load_longlamp("abstract_generation", args.split, path=Path(args.data), split_by_hash=True)
    student = restpg_dspy.lm("local", max_tokens=args.max_tokens)

    def score(repetition_penalty: float, no_repeat_ngram_size: int) -> dict:
        program = RAGWriter(retriever=BM25(k=2))
        controls = {"repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
        program.set_lm(restpg_dspy.with_repetition_controls(student, **controls))
        result = evaluate(program, examples, [loop_rate, rouge_1, rouge_l], cache_dir=args.cache, num_threads=16)
        return result.summary()

    settings = GRID if args.split == "train" else [(1.0, 0), _defaults(TASKS["abstract_generation"])]
    scores = {setting: score(*setting) for setting in settings}
    print(f"{len(examples)} {args.split} records, greedy, {args.max_tokens}-token budget")
    print("| repetition_penalty | no_repeat_ngram_size | loop rate | truncation rate | ROUGE-1 | ROUGE-L |")
    print("|---|---|---|---|---|---|")
    for (penalty, size), summary in scores.items():
        cells = [summary[name] for name in ("loop_rate", "truncation_rate", "rouge_1", "rouge_l")]
        print(f"| {penalty} | {size} | " + " | ".join(_interval(cell) for cell in cells) + " |")
    if args.split == "train":
        print(f"chosen: {choose(scores)}")
    else:
        before, after = (scores[s]["loop_rate"]["mean"] for s in settings)
        print(f"loop rate without / with the defaults {settings[1]}: {before:.3f} / {after:.3f}")


def choose(scores: dict[tuple[float, int], dict]) -> tuple[float, int]:
    """The rule of the module docs."""
    loops = {setting: summary["loop_rate"]["mean"] for setting, summary in scores.items()}
    rouge = {setting: summary["rouge_l"]["mean"] for setting, summary in scores.items()}
    within = [setting for setting in scores if loops[setting] <= LOOP_TARGET]
    if within:
        return max(within, key=lambda s: (rouge[s], -s[0], -s[1]))
    return min(scores, key=lambda s: (loops[s], -rouge[s]))


def _defaults(task) -> tuple[float, int]:
    controls = task.repetition_controls
    return controls.get("repetition_penalty", 1.0), controls.get("no_repeat_ngram_size", 0)


def _interval(stats: dict) -> str:
    return f"{stats['mean']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


if __name__ == "__main__":
    main()
