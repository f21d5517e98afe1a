"""Local corpus files: `.jsonl` (or `.jsonl.gz`), `.txt` and `.parquet`.

A path may hold a `{lang}` placeholder (`data/{lang}.txt`): one file per language, and the
rows need no language field. Without it, JSONL/Parquet rows name their language
(`lang_field`), or the `lang` option declares the whole file one language. A `.txt` file is
one document per line (blank lines skipped; ids are line numbers, stable under edits that
append). Relative paths are resolved against the `base_dir` option (the study's folder,
set by the caller), else the working directory.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuronspec.data.document import Document, corpus_error
from neuronspec.fileio import file_sha256
from neuronspec.data.records import Collected, Fields, collect, is_parallel
from neuronspec.data.sources import DATA_VERSION, Source

PLACEHOLDER = "{lang}"
MAX_GZIP_RATIO = 100
SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".parquet")


class FileSource(Source):
    OPTIONS = frozenset(
        {"base_dir", "text_field", "lang_field", "id_field", "meta_field", "lang", "lang_codes", "parallel", "encoding"}
    )

    def __init__(self, source: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.fields = Fields.from_options(self.options)
        self.suffix = next((s for s in SUFFIXES if self.source.lower().endswith(s)), None)
        if self.suffix is None:
            raise corpus_error(self.source, f"unsupported file type (expected one of {', '.join(SUFFIXES)}, "
                                            "or a builtin:NAME / hf:DATASET source)")
        path = Path(self.source).expanduser()
        if not path.is_absolute():
            path = Path(self.options.get("base_dir") or ".").expanduser() / path
        self.template = str(path)
        self.templated = PLACEHOLDER in self.template
        self.kind = "monolingual"
        self.read_digests: dict[str, str] = {}  # sha256 of the bytes `read` parsed, keyed as `identity` keys them

    # -- locating files -------------------------------------------------------------------

    def path_for(self, lang: str) -> Path:
        return Path(self.template.replace(PLACEHOLDER, self.fields.data_code(lang)))

    def present(self) -> dict[str, Path]:
        """Language -> file for every file the `{lang}` template matches."""
        pattern = glob.escape(self.template).replace(glob.escape(PLACEHOLDER), "*")
        regex = re.compile(re.escape(self.template).replace(re.escape(PLACEHOLDER), "(.+?)") + r"\Z")
        found = {}
        for name in glob.glob(pattern):
            match = regex.match(name)
            if match and "/" not in match.group(1) and Path(name).is_file():
                found[self.fields.our_code(match.group(1))] = Path(name)
        return dict(sorted(found.items()))

    # -- reading --------------------------------------------------------------------------

    def read(self, languages: Sequence[str]) -> tuple[dict[str, list[Document]], bool]:
        collected = Collected()
        if self.templated:
            for lang in languages:
                path = self.path_for(lang)
                if not path.is_file():
                    has = ", ".join(self.present()) or "none"
                    raise corpus_error(self.source, f"no file for language {lang!r} ({path} not found; "
                                                    f"files found for: {has})", language=lang)
                collect(self._rows(path, lang), source=self.source, fields=self.fields, fixed_lang=lang,
                        wanted=[lang], into=collected)
        else:
            path = Path(self.template)
            if not path.is_file():
                raise corpus_error(self.source, f"file not found (looked at {path.resolve()})")
            fixed = self.options.get("lang")
            if self.suffix == ".txt" and fixed is None:
                raise corpus_error(self.source, "a .txt file holds one language: put {lang} in the path "
                                                "(data/{lang}.txt) or set the `lang` option")
            collect(self._rows(path), source=self.source, fields=self.fields,
                    fixed_lang=None if fixed is None else str(fixed), wanted=languages, into=collected)
        if self.suffix == ".txt":
            collected.explicit_ids = False  # line numbers match across files by accident: parallel only when told
        self.missing(languages, list(collected.docs))
        return {lang: collected.docs[lang] for lang in languages}, is_parallel(
            collected, languages, self.options.get("parallel"))

    def _bytes(self, path: Path, lang: str | None) -> bytes:
        """The file's bytes, read once: what is parsed is exactly what `read_digests` records."""
        raw = path.read_bytes()
        self.read_digests[lang if self.templated and lang is not None else path.name] = hashlib.sha256(raw).hexdigest()
        return raw

    def check_unchanged(self, identity: Mapping[str, Any]) -> None:
        """Raise when a file read now differs from the digest the plan was compiled with: its
        result would be stored under the old content's key and later served as that content."""
        expected = identity.get("sha256") or {}
        for name, sha in self.read_digests.items():
            if expected.get(name) != sha:
                raise corpus_error(self.source, f"{name} changed after the plan was compiled (it is being edited?); "
                                                "run again to use its new content", language=name if self.templated else None)

    def _text(self, path: Path, raw: bytes, encoding: str) -> str:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise corpus_error(self.source, f"{path.name}:{line}: not {encoding} (byte {raw[err.start]:#04x}); "
                                            "convert the file, or set the corpus option `encoding`") from None
        except LookupError:
            raise corpus_error(self.source, f"unknown encoding {encoding!r}") from None

    def _rows(self, path: Path, lang: str | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        encoding = str(self.options.get("encoding", "utf-8"))
        raw = self._bytes(path, lang)
        if self.suffix == ".txt":
            for lineno, line in enumerate(io.StringIO(self._text(path, raw, encoding), newline=None), start=1):
                if line.strip():
                    yield f"{path.name}:{lineno}", {self.fields.text: line.strip(), self.fields.id: str(lineno)}
        elif self.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(pa.BufferReader(raw))
            except Exception as err:  # pyarrow raises several types for a bad file
                raise corpus_error(self.source, f"cannot read {path.name} as Parquet: {err}") from None
            for i, row in enumerate(table.to_pylist()):
                yield f"{path.name} row {i}", row
        else:
            if self.suffix == ".jsonl.gz":
                raw = self._gunzip(path, raw)
            with io.StringIO(self._text(path, raw, encoding), newline=None) as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as err:
                        raise corpus_error(self.source, f"{path.name}:{lineno}: not valid JSON ({err})") from None
                    if not isinstance(row, dict):
                        raise corpus_error(self.source, f"{path.name}:{lineno}: expected a JSON object per line")
                    yield f"{path.name}:{lineno}", row

    def _gunzip(self, path: Path, raw: bytes) -> bytes:
        """The decompressed bytes, refused past MAX_GZIP_RATIO times the file (text compresses
        3–10×; a 3 MB file of one repeated byte expands to 3 GB and exhausted memory)."""
        limit = max(MAX_GZIP_RATIO * len(raw), 64 << 20)
        out = io.BytesIO()
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                while block := fh.read(1 << 20):
                    if out.write(block) and out.tell() > limit:
                        raise corpus_error(self.source, f"{path.name}: expands to more than {limit >> 20} MiB "
                                                        f"({MAX_GZIP_RATIO}× the file): not a text corpus")
        except (OSError, EOFError) as err:  # not gzip, or cut short
            raise corpus_error(self.source, f"{path.name}: not a complete gzip file ({err})") from None
        return out.getvalue()

    def identity(self) -> dict[str, Any]:
        if self.templated:
            files = {lang: file_sha256(p) for lang, p in self.present().items()}
        else:
            path = Path(self.template)
            files = {path.name: file_sha256(path)} if path.is_file() else {}
        options = {k: v for k, v in sorted(self.options.items()) if k != "base_dir"}
        return {"source": self.source, "sha256": files, "options": options, "data_version": DATA_VERSION}
