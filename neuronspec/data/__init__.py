"""Corpora: built-in (materialised from registry packages), local files and `datasets`.

    docs = load_corpus("builtin:bible", ["en", "zh"], split="eval", docs_per_language=50)
    docs["zh"][i].id == docs["en"][i].id          # parallel: the same verse in both

Splits are deterministic and disjoint, samples seeded and stable; see `splits.py`.
Built-in text lives only in the user cache (`neuronspec.paths.user_cache()/corpora`).
"""

from neuronspec.data.api import corpus_identity, fetch_corpus, list_corpora, load_corpus
from neuronspec.data.document import CorpusError, CorpusWarning, Document

__all__ = [
    "CorpusError",
    "CorpusWarning",
    "Document",
    "corpus_identity",
    "fetch_corpus",
    "list_corpora",
    "load_corpus",
]
