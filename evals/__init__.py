"""Metrics, cached evaluation runs and reports (importable as ``restpg_dspy.evals``).

Example:
    >>> from restpg_dspy.evals import rouge_1, rouge_l, meteor, option_accuracy, LLMJudge, evaluate
"""

from restpg_dspy.evals.choice import notes_choice, option_accuracy
from restpg_dspy.evals.evaluate import EvaluationResult, bootstrap_interval, evaluate, program_fingerprint
from restpg_dspy.evals.judge import JudgeParseError, LLMJudge
from restpg_dspy.evals.loops import loop_rate, loops
from restpg_dspy.evals.metrics import WeightedMean, meteor, meteor_without_synonyms, rouge_1, rouge_l
from restpg_dspy.evals.paired import paired_bootstrap

__all__ = [
    "EvaluationResult",
    "JudgeParseError",
    "LLMJudge",
    "WeightedMean",
    "bootstrap_interval",
    "evaluate",
    "loop_rate",
    "loops",
    "meteor",
    "meteor_without_synonyms",
    "notes_choice",
    "option_accuracy",
    "paired_bootstrap",
    "program_fingerprint",
    "rouge_1",
    "rouge_l",
]
