"""The built-in corpora: text that ships inside public registry packages.

Each module here says, for one corpus, which package holds the text, how to read it in
place and how to clean it. `store.py` turns that into a verified, versioned JSONL folder
in the user cache; nothing here is ever committed to the repository.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from neuronspec.data.document import Document
from neuronspec.data.packages import Archive, Package

Kind = Literal["parallel", "monolingual", "task"]


@dataclass(frozen=True)
class Builtin:
    """One built-in corpus.

    `extract` reads the package and returns cleaned documents per language (what is written to
    JSONL). `expand`, when set, rebuilds fields that are derived from the stored ones when a
    document is read (e.g. a prompt that repeats the text), so they are not stored twice.
    Bump `builder` whenever `extract` would produce different text: materialised copies with
    an older builder version are rebuilt.
    """

    name: str
    kind: Kind
    aligned: bool  # same item ids across languages (parallel corpora, translated tasks)
    package: Package
    licence: str
    description: str
    languages: tuple[str, ...]  # what `extract` produces (known before materialising)
    cleaning: str
    builder: int
    extract: Callable[[Archive], dict[str, list[Document]]]
    expand: Callable[[Document], Document] | None = None
    extra: dict[str, object] = field(default_factory=dict)  # recorded in the manifest


def registry() -> dict[str, Builtin]:
    """All built-in corpora by name (imported lazily: each module is small but reads nothing at import)."""
    from neuronspec.data.builtin import bible, bible_next, bible_passages, multiemo, udhr, wiki, wikilingua

    builtins = (bible.BUILTIN, bible_passages.BUILTIN, bible_next.BUILTIN, udhr.BUILTIN, wikilingua.BUILTIN,
                multiemo.BUILTIN, wiki.BUILTIN)
    return {b.name: b for b in builtins}


def get(name: str) -> Builtin:
    name = name.removeprefix("builtin:")
    corpora = registry()
    if name not in corpora:
        from neuronspec.data.document import CorpusError

        raise CorpusError(
            f"builtin:{name}: unknown built-in corpus (available: {', '.join(sorted(corpora))})", source=f"builtin:{name}"
        )
    return corpora[name]
