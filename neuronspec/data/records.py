"""Rows (from JSONL, Parquet or a `datasets` table) → `Document`s, with the field options.

Shared by local files and hub datasets so both read the same options the same way:
`text_field` (default "text"), `lang_field` ("lang"), `id_field` ("id"), `meta_field` ("meta").
Every other column goes into `meta` too, so a task file `{"text", "lang", "label", "choices"}`
needs no extra options. `lang_codes` maps our codes to the data's (`{"zh": "zho_Hans"}`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronspec.data.document import Document, corpus_error


@dataclass
class Fields:
    text: str = "text"
    lang: str = "lang"
    id: str = "id"
    meta: str = "meta"
    lang_codes: dict[str, str] = field(default_factory=dict)  # our code -> the data's code

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Fields:
        return cls(
            text=str(options.get("text_field", "text")),
            lang=str(options.get("lang_field", "lang")),
            id=str(options.get("id_field", "id")),
            meta=str(options.get("meta_field", "meta")),
            lang_codes={str(k): str(v) for k, v in dict(options.get("lang_codes") or {}).items()},
        )

    def data_code(self, lang: str) -> str:
        return self.lang_codes.get(lang, lang)

    def our_code(self, data_code: str) -> str:
        reverse = {v: k for k, v in self.lang_codes.items()}
        return reverse.get(data_code, data_code)


@dataclass
class Collected:
    """Documents per language, and whether any row named its id (needed to call a file parallel)."""

    docs: dict[str, list[Document]] = field(default_factory=dict)
    explicit_ids: bool = False


def collect(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    source: str,
    fields: Fields,
    fixed_lang: str | None,
    wanted: Sequence[str],
    into: Collected | None = None,
) -> Collected:
    """Read rows `(where, row)` (where = "line 12" for messages) into documents of `wanted` languages.

    With `fixed_lang` (the file is one language, from a `{lang}` path or the `lang` option)
    rows need no language field. Ids default to the row's position within its language.
    """
    out = into if into is not None else Collected()
    positions: dict[str, int] = {}
    seen: dict[str, set[str]] = {lang: {d.id for d in out.docs.get(lang, [])} for lang in wanted}
    reserved = {fields.text, fields.lang, fields.id, fields.meta}
    for where, row in rows:
        if fixed_lang is not None:
            lang = fixed_lang
        else:
            if fields.lang not in row or row[fields.lang] in (None, ""):
                raise corpus_error(source, f"{where}: no language field {fields.lang!r} (set the lang_field option, "
                                           "or put {lang} in the path)")
            lang = fields.our_code(str(row[fields.lang]))
        position = positions.get(lang, 0)
        positions[lang] = position + 1
        if lang not in seen:
            out.docs.setdefault(lang, [])  # remember the language exists, for "has: …" messages
            continue
        text = row.get(fields.text)
        if not isinstance(text, str):
            raise corpus_error(source, f"{where}: field {fields.text!r} is missing or not a string "
                                       f"(has: {', '.join(map(str, row))})", language=lang)
        if not text.strip():
            continue
        if row.get(fields.id) not in (None, ""):
            doc_id = str(row[fields.id])
            out.explicit_ids = True
        else:
            doc_id = str(position)
        if doc_id in seen[lang]:
            raise corpus_error(source, f"{where}: duplicate id {doc_id!r} for language {lang!r}", language=lang)
        seen[lang].add(doc_id)
        meta_value = row.get(fields.meta)
        meta = dict(meta_value) if isinstance(meta_value, Mapping) else {}
        meta.update({k: v for k, v in row.items() if k not in reserved})
        out.docs.setdefault(lang, []).append(Document(doc_id, lang, text, meta))
    return out


def is_parallel(collected: Collected, languages: Sequence[str], option: Any) -> bool:
    """Aligned when the `parallel` option says so; by default when rows carry ids shared across languages."""
    if option is not None:
        return bool(option)
    if not collected.explicit_ids or len(languages) < 2:
        return False
    id_sets = [{d.id for d in collected.docs.get(lang, [])} for lang in languages]
    return bool(set.intersection(*id_sets))
