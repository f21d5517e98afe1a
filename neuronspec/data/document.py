"""The two types every other layer sees: a `Document` and the `CorpusError` it may raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One text of one language.

    `id` names the *item*, not the text: in a parallel corpus the same verse or paragraph has
    the same id in every language (`GEN.1.1`), which is what keeps splits and samples aligned.
    Task items carry what an evaluator needs in `meta` (multiple choice: `label`, `choices`,
    `prompt`; generation: `prompt`, `reference`).
    """

    id: str
    lang: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "lang": self.lang, "text": self.text, "meta": self.meta}


class CorpusError(ValueError):
    """A corpus cannot provide what was asked.

    The message always starts with the corpus (`builtin:bible: …`, `file corpus
    'data/x.jsonl': …`) and names the language where one is involved, so the study layer can
    show it next to the offending line unchanged. `source` and `language` are kept as
    attributes for callers that want to map the error back to a field.
    """

    def __init__(self, message: str, *, source: str | None = None, language: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.language = language


class CorpusWarning(UserWarning):
    """Something was repaired on the way (a corrupted cache re-materialised, a package digest changed)."""


def describe_source(source: str) -> str:
    """How messages name a source: builtins and hub ids as written, files as `file corpus '…'`."""
    source = source.strip()
    if source.startswith(("builtin:", "hf:")):
        return source
    return f"file corpus {source!r}"


def corpus_error(source: str, message: str, *, language: str | None = None) -> CorpusError:
    """A `CorpusError` whose message is prefixed with the described source."""
    return CorpusError(f"{describe_source(source)}: {message}", source=source, language=language)
