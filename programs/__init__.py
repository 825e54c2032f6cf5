"""Personalized DSPy programs (importable as ``restpg_dspy.programs``).

Example:
    >>> from restpg_dspy.programs import PersonalizedWriter
    >>> from restpg_dspy.retrieval import BM25
    >>> writer = PersonalizedWriter(retriever=BM25(k=2))
    >>> sorted(name for name, _ in writer.named_predictors())
    ['reason', 'write']
"""

from restpg_dspy.programs.adapter import CompletionAdapter
from restpg_dspy.programs.profile import ProfileFormatter
from restpg_dspy.programs.recorded import RecordedOutputs
from restpg_dspy.programs.routing import PersonalRouter
from restpg_dspy.programs.signatures import (
    HindsightReasoning,
    PersonalizedResponse,
    PersonalReasoning,
    PlainResponse,
    ProfileResponse,
)
from restpg_dspy.programs.writers import NoPersonalization, PersonalizedProgram, PersonalizedWriter, RAGWriter

__all__ = [
    "CompletionAdapter",
    "HindsightReasoning",
    "NoPersonalization",
    "PersonalReasoning",
    "PersonalRouter",
    "PersonalizedProgram",
    "PersonalizedResponse",
    "PersonalizedWriter",
    "PlainResponse",
    "ProfileFormatter",
    "ProfileResponse",
    "RAGWriter",
    "RecordedOutputs",
]
