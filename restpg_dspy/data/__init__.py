"""Data: LongLaMP loaders and the offline synthetic personalization tasks.

Example:
    >>> from restpg_dspy.data import synthetic
    >>> len(synthetic("val", seed=0, users=2, requests_per_user=1))
    2
"""

from restpg_dspy.data.evidence import EvidenceTeacherError, evidence_teacher
from restpg_dspy.data.implicit_choice import ChoiceUser
from restpg_dspy.data.life_facts import UserTraits
from restpg_dspy.data.longlamp import load_longlamp, read_records, records_to_examples
from restpg_dspy.data.oracle import OracleError, oracle_teacher
from restpg_dspy.data.synthetic import TASKS, synthetic

__all__ = [
    "TASKS",
    "ChoiceUser",
    "EvidenceTeacherError",
    "OracleError",
    "UserTraits",
    "evidence_teacher",
    "load_longlamp",
    "oracle_teacher",
    "read_records",
    "records_to_examples",
    "synthetic",
]
