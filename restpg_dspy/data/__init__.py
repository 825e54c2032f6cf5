"""Data: LongLaMP loaders and the offline synthetic personalization benchmark.

Example:
    >>> from restpg_dspy.data import synthetic
    >>> len(synthetic("val", seed=0, users=2, requests_per_user=1))
    2
"""

from restpg_dspy.data.longlamp import load_longlamp, read_records, records_to_examples
from restpg_dspy.data.synthetic import UserTraits, expected_output, synthetic

__all__ = ["UserTraits", "expected_output", "load_longlamp", "read_records", "records_to_examples", "synthetic"]
