"""Metrics, cached evaluation runs and reports (importable as ``restpg_dspy.evals``).

Example:
    >>> from restpg_dspy.evals import rouge_1, rouge_l, meteor, LLMJudge, evaluate
"""

from restpg_dspy.evals.evaluate import EvaluationResult, bootstrap_interval, evaluate, program_fingerprint
from restpg_dspy.evals.judge import JudgeParseError, LLMJudge
from restpg_dspy.evals.metrics import meteor, meteor_without_synonyms, rouge_1, rouge_l

__all__ = [
    "EvaluationResult",
    "JudgeParseError",
    "LLMJudge",
    "bootstrap_interval",
    "evaluate",
    "meteor",
    "meteor_without_synonyms",
    "program_fingerprint",
    "rouge_1",
    "rouge_l",
]
