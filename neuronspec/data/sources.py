"""Corpus sources: the `Source` contract and built-in corpora (files and hub datasets live in
`files.py` and `hub.py`; `api.resolve` picks one by the prefix of the source string).

    builtin:NAME        a built-in corpus, materialised in the user cache on first use
    hf:DATASET          a `datasets.load_dataset` dataset (hub id, builder name or local folder)
    anything else       a local .jsonl / .jsonl.gz / .txt / .parquet path, `{lang}` allowed

Each source reads documents for the requested languages and says whether they are aligned
(same item ids across languages); splitting and sampling happen afterwards in `splits.py`,
identically for every source. Each source also states its identity for cache keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from neuronspec.data.document import CorpusError, Document, corpus_error, describe_source

# Bump when splitting, sampling or reading changes what a source yields for the same input.
DATA_VERSION = 1


class Source(ABC):
    """A parsed source string with its options."""

    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    kind: str = "monolingual"

    def __init__(self, source: str, options: Mapping[str, Any] | None = None) -> None:
        self.source = source.strip()
        self.options: dict[str, Any] = dict(options or {})
        unknown = sorted(set(self.options) - self.OPTIONS)
        if unknown:
            allowed = ", ".join(sorted(self.OPTIONS)) or "none"
            raise corpus_error(self.source, f"unknown option(s) {', '.join(unknown)} (allowed: {allowed})")

    @property
    def label(self) -> str:
        return describe_source(self.source)

    @abstractmethod
    def read(self, languages: Sequence[str]) -> tuple[dict[str, list[Document]], bool]:
        """Documents of each requested language (all of them, in corpus order) and whether they are aligned."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that determines what `read` returns, as JSON-able values."""

    def check_unchanged(self, identity: Mapping[str, Any]) -> None:
        """After `read`: raise if what was read is not what `identity` (taken at compile time) describes.
        Built-ins verify their own checksums and hub datasets are pinned by revision: nothing to do."""

    def missing(self, languages: Sequence[str], available: Sequence[str]) -> None:
        """Raise the standard error when a requested language is not in `available`."""
        for lang in languages:
            if lang not in available:
                has = ", ".join(sorted(available)) or "no languages"
                raise corpus_error(self.source, f"language {lang!r} not available (has: {has})", language=lang)


class BuiltinSource(Source):
    """`builtin:NAME`: read from the verified JSONL folder, materialising it on first use."""

    def __init__(self, source: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, options)
        from neuronspec.data.builtin import get

        self.builtin = get(self.source.removeprefix("builtin:"))
        self.kind = self.builtin.kind

    def read(self, languages: Sequence[str]) -> tuple[dict[str, list[Document]], bool]:
        from neuronspec.data import store

        self.missing(languages, self.builtin.languages)
        manifest = store.ensure(self.builtin, languages)
        self.missing(languages, list(manifest["languages"]))
        return {lang: store.read_documents(self.builtin, manifest, lang) for lang in languages}, self.builtin.aligned

    def identity(self) -> dict[str, Any]:
        """Package + digest + builder version: the JSONL content is a function of these.

        Deliberately computable before materialising (no fetch when a plan is compiled), and
        unchanged by it, so materialising never invalidates cached results.
        """
        from neuronspec.data import store
        from neuronspec.data.packages import cached_package

        manifest = store.read_manifest(self.builtin)
        package = self.builtin.package
        if package.withdrawn and manifest is None and cached_package(package) is None:
            # Known to be unfetchable: say so when the plan is compiled, not after the model has loaded.
            raise CorpusError(store.withdrawn_message(self.builtin), source=self.source)
        digest = manifest["source_package"]["sha256"] if manifest is not None else None
        return {
            "source": self.source,
            "package": str(package),
            "package_sha256": digest or package.sha256,
            "builder": self.builtin.builder,
            "data_version": DATA_VERSION,
        }
