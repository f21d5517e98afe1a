"""`hf:DATASET` sources through `datasets.load_dataset`, for users with hub access.

Options: `config`, `split` (default "train"), `revision` (pin it: it is the cache identity),
`data_files` / `data_dir` (for builder names like `hf:json`, `hf:parquet` on local files),
the field options of `records.Fields`, `lang` (the whole dataset is one language) and
`parallel`. `{lang}` in `config`, `split`, `data_files` or `data_dir` loads one dataset per
language (`config: "{lang}"` for XNLI-style datasets, with `lang_codes` when the dataset
spells codes differently, e.g. `{"zh": "zho_Hans"}`); otherwise rows name their language
in `lang_field`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuronspec.data.document import Document, corpus_error
from neuronspec.data.packages import sha256_file
from neuronspec.data.records import Collected, Fields, collect, is_parallel
from neuronspec.data.sources import DATA_VERSION, Source

PLACEHOLDER = "{lang}"
_LOCATED = ("config", "split", "data_files", "data_dir")


class HubSource(Source):
    OPTIONS = frozenset(
        {"config", "split", "revision", "data_files", "data_dir", "base_dir", "text_field", "lang_field", "id_field",
         "meta_field", "lang", "lang_codes", "parallel"}
    )

    def __init__(self, source: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.dataset = self.source.removeprefix("hf:").strip()
        if not self.dataset:
            raise self.error("empty dataset id after 'hf:'")
        self.fields = Fields.from_options(self.options)
        self.per_language = any(PLACEHOLDER in str(self.options.get(k, "")) for k in _LOCATED)
        self.kind = "monolingual"

    def error(self, message: str, language: str | None = None) -> Exception:
        return corpus_error(self.source, message, language=language)

    # -- load_dataset arguments ------------------------------------------------------------

    def _base_dir(self) -> Path:
        return Path(self.options.get("base_dir") or ".").expanduser()

    def _local(self, value: str) -> str:
        """A relative local path made absolute against base_dir (hub paths are left alone)."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        candidate = self._base_dir() / path
        return str(candidate) if candidate.exists() or any(candidate.parent.glob(candidate.name)) else value

    def _kwargs(self, lang: str | None) -> dict[str, Any]:
        def fill(value: Any) -> Any:
            if lang is None:
                return value
            code = self.fields.data_code(lang)
            if isinstance(value, str):
                return value.replace(PLACEHOLDER, code)
            if isinstance(value, list):
                return [fill(v) for v in value]
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            return value

        def local(value: Any) -> Any:
            if isinstance(value, str):
                return self._local(value)
            if isinstance(value, list):
                return [local(v) for v in value]
            if isinstance(value, dict):
                return {k: local(v) for k, v in value.items()}
            return value

        kwargs: dict[str, Any] = {"path": self._local(self.dataset), "split": fill(self.options.get("split", "train"))}
        if self.options.get("config") is not None:
            kwargs["name"] = fill(self.options["config"])
        if self.options.get("revision") is not None:
            kwargs["revision"] = str(self.options["revision"])
        if self.options.get("data_files") is not None:
            kwargs["data_files"] = local(fill(self.options["data_files"]))
        if self.options.get("data_dir") is not None:
            kwargs["data_dir"] = fill(self.options["data_dir"])
        return kwargs

    def _load(self, lang: str | None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a dependency
            raise self.error("the `datasets` package is needed for hf: sources (pip install datasets)") from None
        kwargs = self._kwargs(lang)
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "path")
        try:
            table = datasets.load_dataset(**kwargs)
        except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, …)
            raise self.error(f"could not load ({shown}): {type(err).__name__}: {err}", language=lang) from None
        if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            raise self.error(f"`split` must name one split (has: {', '.join(table)})", language=lang)
        for i, row in enumerate(table):
            yield f"row {i}", row

    # -- Source -----------------------------------------------------------------------------

    def read(self, languages: Sequence[str]) -> tuple[dict[str, list[Document]], bool]:
        collected = Collected()
        if self.per_language:
            for lang in languages:
                collect(self._load(lang), source=self.source, fields=self.fields, fixed_lang=lang, wanted=[lang],
                        into=collected)
        else:
            fixed = self.options.get("lang")
            collect(self._load(None), source=self.source, fields=self.fields,
                    fixed_lang=None if fixed is None else str(fixed), wanted=languages, into=collected)
        self.missing(languages, list(collected.docs))
        return {lang: collected.docs[lang] for lang in languages}, is_parallel(
            collected, languages, self.options.get("parallel"))

    def identity(self) -> dict[str, Any]:
        """Dataset id, revision and load options; local data files by content.

        An unpinned hub dataset (no `revision`) is identified by name only: results computed
        on it are reused even if the dataset changes upstream, so pin a revision.
        """
        local_files: dict[str, str] = {}
        for value in _flatten(self.options.get("data_files")):
            for name in sorted(Path(self._base_dir()).glob(value) if not Path(value).is_absolute()
                               else Path("/").glob(value.lstrip("/"))):
                if name.is_file():
                    local_files[name.name] = sha256_file(name)
        dataset_path = Path(self._local(self.dataset))
        if dataset_path.is_dir():
            for name in sorted(dataset_path.rglob("*")):
                if name.is_file() and not any(part.startswith(".") for part in name.relative_to(dataset_path).parts):
                    local_files[name.relative_to(dataset_path).as_posix()] = sha256_file(name)
        options = {k: v for k, v in sorted(self.options.items()) if k != "base_dir"}
        return {"source": self.source, "revision": self.options.get("revision"), "options": options,
                "local_sha256": local_files, "data_version": DATA_VERSION}


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.replace(PLACEHOLDER, "*")]
    if isinstance(value, Mapping):
        return [v for item in value.values() for v in _flatten(item)]
    return [v for item in value for v in _flatten(item)]
