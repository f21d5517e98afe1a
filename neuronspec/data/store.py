"""Materialised built-in corpora in the user cache: `user_cache()/corpora/NAME/`.

Layout: one `LANG.jsonl` per language (`{"id","lang","text","meta"}` per line) and a
`manifest.json` with provenance (package, version, digest, licence, date, cleaning notes)
and the sha256, size and document count of every JSONL.

- Atomic: a corpus is written into a hidden temporary folder and renamed into place, so an
  interrupted fetch leaves either the old corpus or none, never half of one.
- Verified: every read checks the digests of the files it reads; a mismatch (a truncated or
  edited file) re-materialises with a warning. So does a manifest written by an older
  builder version (the cleaning changed).
- Concurrent-safe: materialisation holds a per-corpus lock and re-checks after acquiring it,
  so two studies starting at once build the corpus once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from neuronspec.data.builtin import Builtin
from neuronspec.data.document import CorpusError, CorpusWarning, Document
from neuronspec.data.packages import Archive, cached_package, obtain
from neuronspec.fileio import file_sha256
from neuronspec.paths import user_cache

log = logging.getLogger("neuronspec.data")

MANIFEST = "manifest.json"
FORMAT = 1  # layout of the folder and manifest


def corpora_root() -> Path:
    root = user_cache() / "corpora"
    root.mkdir(parents=True, exist_ok=True)
    return root


def corpus_dir(name: str) -> Path:
    return corpora_root() / name


def read_manifest(builtin: Builtin) -> dict[str, Any] | None:
    """The manifest of the materialised corpus, or None (absent, unreadable, other format)."""
    path = corpus_dir(builtin.name) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("name") != builtin.name:
        return None
    return manifest


def _problems(builtin: Builtin, manifest: dict[str, Any], languages: Sequence[str] | None) -> list[str]:
    """What is wrong with a materialised corpus for reading `languages` (all when None)."""
    if manifest.get("builder") != builtin.builder:
        return [f"built by builder version {manifest.get('builder')}, current is {builtin.builder}"]
    entries = manifest.get("languages", {})
    folder = corpus_dir(builtin.name)
    problems = []
    for lang in languages if languages is not None else sorted(entries):
        entry = entries.get(lang)
        if entry is None:
            continue  # not part of the corpus: the caller reports the unknown language
        path = folder / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']} is missing")
        elif path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['file']} does not match its checksum")
    return problems


def ensure(builtin: Builtin, languages: Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest of a verified corpus, materialising or repairing it first when needed."""
    manifest = read_manifest(builtin)
    if manifest is not None:
        problems = _problems(builtin, manifest, languages)
        if not problems:
            return manifest
        warnings.warn(
            f"builtin:{builtin.name}: {'; '.join(problems)} in {corpus_dir(builtin.name)}; re-materialising",
            CorpusWarning,
            stacklevel=3,
        )
    return materialise(builtin)


def materialise(builtin: Builtin, from_path: Path | None = None, *, force: bool = False) -> dict[str, Any]:
    """Build the corpus folder from the package (fetched, cached or `from_path`); returns its manifest."""
    label = f"builtin:{builtin.name}"
    with _lock(builtin.name):
        if not force and from_path is None:
            current = read_manifest(builtin)
            if current is not None and not _problems(builtin, current, None):
                return current  # another process finished it while we waited for the lock
        log.info("%s: materialising from %s", label, builtin.package)
        if builtin.package.withdrawn and from_path is None and cached_package(builtin.package) is None:
            raise CorpusError(withdrawn_message(builtin), source=label)
        t0 = time.perf_counter()
        package_path = obtain(builtin.package, label, from_path)
        t_fetch = time.perf_counter() - t0
        digest = file_sha256(package_path) if package_path.is_file() else None
        if digest is not None and builtin.package.sha256 and digest != builtin.package.sha256:
            warnings.warn(
                f"{label}: {package_path.name} has sha256 {digest[:12]}…, not the {builtin.package.sha256[:12]}… "
                f"this corpus was written for; the manifest records the file actually used",
                CorpusWarning,
                stacklevel=2,
            )
        try:
            docs = builtin.extract(Archive(package_path))
        except (KeyError, ValueError, OSError) as err:
            raise CorpusError(f"{label}: cannot read {package_path.name}: {err}", source=label) from err
        t_extract = time.perf_counter() - t0 - t_fetch
        manifest = _write(builtin, docs, package_path, digest, {"fetch": round(t_fetch, 2), "extract": round(t_extract, 2)})
        log.info("%s: %d languages in %.1fs", label, len(manifest["languages"]), time.perf_counter() - t0)
        return manifest


def withdrawn_message(builtin: Builtin) -> str:
    """Why a built-in cannot be fetched, how to use it anyway, and which built-ins work."""
    from neuronspec.data.builtin import registry

    package = builtin.package
    working = sorted(name for name, b in registry().items() if not b.package.withdrawn)
    return (
        f"builtin:{builtin.name}: its package {package} is no longer served by the package registry "
        f"({package.withdrawn}). With a copy of that file: `neuronspec corpora fetch {builtin.name} --from FILE`; "
        f"or point the study at a Hugging Face dataset (`source: hf:DATASET`). Built-ins that work: {', '.join(working)}."
    )


def _write(
    builtin: Builtin, docs: dict[str, list[Document]], package_path: Path, digest: str | None, seconds: dict[str, float]
) -> dict[str, Any]:
    root = corpora_root()
    final = root / builtin.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{builtin.name}.tmp-", dir=root))
    try:
        languages = {}
        for lang in sorted(docs):
            if not docs[lang]:
                continue
            path = tmp / f"{lang}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as fh:
                for doc in docs[lang]:
                    fh.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
            languages[lang] = {
                "file": path.name, "documents": len(docs[lang]), "bytes": path.stat().st_size, "sha256": file_sha256(path)
            }
        package = builtin.package
        manifest = {
            "format": FORMAT,
            "name": builtin.name,
            "kind": builtin.kind,
            "aligned": builtin.aligned,
            "builder": builtin.builder,
            "description": builtin.description,
            "licence": builtin.licence,
            "source_package": {
                "registry": package.registry, "name": package.name, "version": package.version,
                "file": package_path.name, "sha256": digest, "expected_sha256": package.sha256,
            },
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds,
            "cleaning": builtin.cleaning,
            "expanded_on_read": builtin.expand is not None,
            "languages": languages,
            **({"extra": builtin.extra} if builtin.extra else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap(new: Path, final: Path) -> None:
    """Replace `final` by `new` with renames only (a directory cannot be replaced in one step)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    path = corpora_root() / f".{name}.lock"
    with path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; atomic renames still keep readers safe
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_documents(builtin: Builtin, manifest: dict[str, Any], lang: str) -> list[Document]:
    """The documents of one language, with the builtin's derived fields added."""
    path = corpus_dir(builtin.name) / manifest["languages"][lang]["file"]
    docs = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            doc = Document(row["id"], row["lang"], row["text"], row.get("meta") or {})
            docs.append(builtin.expand(doc) if builtin.expand is not None else doc)
    return docs
