"""`hf:DATASET` sources through `datasets.load_dataset`, for users with hub access.

Options: `config`, `split` (default "train"), `revision` (a hub dataset without one is keyed
by the commit it resolves to — from the local hub cache, else asked of the hub — and read at
that commit), `data_files` / `data_dir` (for builder names like `hf:json`, `hf:parquet` on
local files), `max_rows` (read only the first rows of the split, streamed: a large split is
never downloaded whole), `streaming` (stream the split instead of materialising it),
the field options of `records.Fields`, `lang` (the whole dataset is one language) and
`parallel`. `{lang}` in `config`, `split`, `data_files` or `data_dir` loads one dataset per
language (`config: "{lang}"` for XNLI-style datasets, with `lang_codes` when the dataset
spells codes differently, e.g. `{"zh": "zho_Hans"}`); otherwise rows name their language
in `lang_field`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuronspec.data.document import Document, corpus_error
from neuronspec.fileio import file_sha256
from neuronspec.data.records import Collected, Fields, collect, is_parallel
from neuronspec.data.sources import DATA_VERSION, Source

PLACEHOLDER = "{lang}"
_LOCATED = ("config", "split", "data_files", "data_dir")


#: `datasets` builders that read local files (not hub datasets: their content digest is the identity)
PACKAGED_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas", "sql", "xml", "webdataset",
                               "imagefolder", "audiofolder", "videofolder", "generator", "cache", "hdf5"})


class HubSource(Source):
    OPTIONS = frozenset(
        {"config", "split", "revision", "data_files", "data_dir", "base_dir", "text_field", "lang_field", "id_field",
         "meta_field", "lang", "lang_codes", "parallel", "streaming", "max_rows"}
    )

    def __init__(self, source: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.dataset = self.source.removeprefix("hf:").strip()
        if not self.dataset:
            raise self.error("empty dataset id after 'hf:'")
        self.fields = Fields.from_options(self.options)
        self.per_language = any(PLACEHOLDER in str(self.options.get(k, "")) for k in _LOCATED)
        self.kind = "monolingual"
        self._resolved: str | None = None

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
        revision = self.options.get("revision") or (self.resolved_revision() if self.on_hub() else None)
        if revision is not None:
            kwargs["revision"] = str(revision)
        if self.options.get("streaming") or self.options.get("max_rows") is not None:
            kwargs["streaming"] = True
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
        from neuronspec.progress import third_party_output

        kwargs = self._kwargs(lang)
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "path")
        try:
            with third_party_output():
                table = datasets.load_dataset(**kwargs)
        except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, …)
            raise self.error(f"could not load ({shown}): {type(err).__name__}: {err}", language=lang) from None
        if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            raise self.error(f"`split` must name one split (has: {', '.join(table)})", language=lang)
        rows = table if self.options.get("max_rows") is None else itertools.islice(table, int(self.options["max_rows"]))
        for i, row in enumerate(rows):
            yield f"row {i}", row

    # -- revisions --------------------------------------------------------------------------

    def on_hub(self) -> bool:
        """A dataset on the hub (not a packaged builder over local files, not a local folder)."""
        return self.dataset not in PACKAGED_BUILDERS and not Path(self._local(self.dataset)).exists()

    def resolved_revision(self) -> str:
        """The commit an unpinned hub dataset resolves to now: the local hub cache's ref, else the hub's answer."""
        if self._resolved is None:
            self._resolved = _hub_revision(self.dataset, self.error)
        return self._resolved

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

        An unpinned hub dataset (no `revision`) is identified by the commit it resolves to, so
        a dataset that changes upstream is read (and cached) anew, never served from the old cache.
        """
        local_files: dict[str, str] = {}
        for value in _flatten(self.options.get("data_files")):
            for name in sorted(Path(self._base_dir()).glob(value) if not Path(value).is_absolute()
                               else Path("/").glob(value.lstrip("/"))):
                if name.is_file():
                    local_files[name.name] = file_sha256(name)
        dataset_path = Path(self._local(self.dataset))
        if dataset_path.is_dir():
            for name in sorted(dataset_path.rglob("*")):
                if name.is_file() and not any(part.startswith(".") for part in name.relative_to(dataset_path).parts):
                    local_files[name.relative_to(dataset_path).as_posix()] = file_sha256(name)
        options = {k: v for k, v in sorted(self.options.items()) if k != "base_dir"}
        revision = self.options.get("revision") or (self.resolved_revision() if self.on_hub() else None)
        return {"source": self.source, "revision": revision, "options": options,
                "local_sha256": local_files, "data_version": DATA_VERSION}


def _hub_revision(dataset: str, error: Any) -> str:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - datasets depends on it
        raise error("the `huggingface_hub` package is needed for hf: datasets") from None
    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}" / "refs" / "main"
    if ref.is_file():
        return ref.read_text().strip()
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(dataset).sha
    except Exception as exc:  # offline, unknown dataset, no permission: many types
        raise error(f"cannot resolve the dataset's current revision ({type(exc).__name__}: {exc}); "
                    "set `revision:` to a commit to pin it") from None
    if not sha:
        raise error("the hub gave no revision for the dataset; set `revision:` to a commit to pin it")
    return str(sha)


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.replace(PLACEHOLDER, "*")]
    if isinstance(value, Mapping):
        return [v for item in value.values() for v in _flatten(item)]
    return [v for item in value for v in _flatten(item)]
