"""Outputs recorded elsewhere, as a program: another system's predictions scored like any method's.

LongLaMP's records carry the predictions of a Llama-3-8B RAG baseline (``reference_prediction``). Scoring them with
the same metrics, cache and paired intervals as this package's methods puts the paper's scale beside ours on the
same records.

Example:
    >>> import dspy
    >>> examples = [dspy.Example(request="Title A", output="x", reference_prediction="We study A.")]
    >>> RecordedOutputs.from_examples(examples, "reference_prediction")(request="Title A").response
    'We study A.'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import dspy

from restpg_dspy.errors import UsageError


class RecordedOutputs(dspy.Module):
    """Answers each request with the output recorded for it.

    Args:
        outputs: The recorded output of each request.
        source: What the outputs are (part of the cache fingerprint, with their content).
    """

    def __init__(self, outputs: dict[str, str], source: str):
        super().__init__()
        self.outputs = dict(outputs)
        self.source = source

    @classmethod
    def from_examples(cls, examples: list[dspy.Example], field: str) -> RecordedOutputs:
        """The outputs that ``examples`` hold in ``field``, by request.

        Raises:
            UsageError: an example without that field (named by its id), or two examples with one request.
        """
        outputs: dict[str, str] = {}
        for example in examples:
            value = example.get(field)
            if not isinstance(value, str):
                raise UsageError(f"example {example.get('id')!r} has no recorded {field!r} to answer with")
            if outputs.setdefault(example.request, value) != value:
                raise UsageError(f"two examples share the request {example.request[:60]!r} with different {field}")
        return cls(outputs, field)

    def forward(self, request: str, profile: Any = None) -> dspy.Prediction:
        if request not in self.outputs:
            raise UsageError(f"no recorded {self.source} for the request {request[:60]!r}")
        return dspy.Prediction(response=self.outputs[request])

    def describe(self) -> dict[str, Any]:
        """What decides this program's outputs: their source and content (for cache fingerprints)."""
        content = hashlib.sha256(json.dumps(self.outputs, sort_keys=True).encode()).hexdigest()[:16]
        return {"program": type(self).__name__, "source": self.source, "outputs": content}
