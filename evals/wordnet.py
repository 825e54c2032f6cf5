"""WordNet for METEOR, offline: Debian's WordNet 3.0 files copied into the environment's ``nltk_data``.

nltk's downloader needs the internet. Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages ship the same
database under ``/usr/share/wordnet`` but lack the ``lexnames`` table nltk also reads, which is written here.

Run ``python -m restpg_dspy.evals.wordnet`` (the Makefile does, after installing those two packages).
"""

from __future__ import annotations

import functools
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_DATABASE_FILES = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")]
_DATABASE_FILES += [f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb")] + ["index.sense"]
# WordNet 3.0's lexicographer files: number, name, syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb).
_LEXNAMES = (
    ["adj.all", "adj.pert", "adv.all", "noun.Tops"]
    + [
        f"noun.{n}"
        for n in (
            "act",
            "animal",
            "artifact",
            "attribute",
            "body",
            "cognition",
            "communication",
            "event",
            "feeling",
            "food",
            "group",
            "location",
            "motive",
            "object",
            "person",
            "phenomenon",
            "plant",
            "possession",
            "process",
            "quantity",
            "relation",
            "shape",
            "state",
            "substance",
            "time",
        )
    ]
    + [
        f"verb.{n}"
        for n in (
            "body",
            "change",
            "cognition",
            "communication",
            "competition",
            "consumption",
            "contact",
            "creation",
            "emotion",
            "motion",
            "perception",
            "possession",
            "social",
            "stative",
            "weather",
        )
    ]
    + ["adj.ppl"]
)
_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def nltk_wordnet_dir() -> Path:
    """Where this environment's nltk looks for WordNet: ``<sys.prefix>/nltk_data/corpora/wordnet``."""
    return Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"


def provision(source: Path = DEBIAN_WORDNET, target: Path | None = None) -> Path:
    """Copy the WordNet database from ``source`` into ``target`` and write ``lexnames``; return ``target``.

    Copies, not links: nltk refuses corpus files that resolve outside its data folder.

    Raises:
        FileNotFoundError: ``source`` lacks a database file (install Debian's ``wordnet-base``).
    """
    target = target or nltk_wordnet_dir()
    missing = [name for name in _DATABASE_FILES if not (source / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{source} lacks WordNet files {missing}; install Debian's wordnet-base and wordnet-sense-index packages"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in _DATABASE_FILES:
        if not (target / name).exists() or (target / name).is_symlink():
            (target / name).unlink(missing_ok=True)
            shutil.copyfile(source / name, target / name)
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(_LEXNAMES)]
    (target / "lexnames").write_text("\n".join(lines) + "\n")
    return target


@functools.cache
def load() -> Any:
    """nltk's WordNet reader over the provisioned files, or ``None`` when WordNet is not available."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    for root in (nltk_wordnet_dir(), Path.home() / "nltk_data" / "corpora" / "wordnet"):
        if (root / "data.noun").exists() and (root / "lexnames").exists():
            with warnings.catch_warnings():  # "multilingual functions are not available": no OMW data, as intended
                warnings.simplefilter("ignore", UserWarning)
                reader = WordNetCorpusReader(str(root), None)
            reader.synsets("dog")  # fail here, not in the middle of an evaluation
            return reader
    return None


if __name__ == "__main__":
    print(f"WordNet copied into {provision()}")
