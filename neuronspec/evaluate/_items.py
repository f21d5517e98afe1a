"""Uniform access to evaluation items.

Evaluators accept `neuronspec.data.Document`s, but also plain strings, dicts and any object
with `.text` / `.meta`, so they can be used (and tested) without the data layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def item_text(item: Any) -> str:
    """The item's text: the string itself, `.text`, or a mapping's `"text"`."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        text = item.get("text")
        if text is None and isinstance(item.get("meta"), Mapping):
            text = item["meta"].get("text")
        return "" if text is None else str(text)
    text = getattr(item, "text", None)
    if text is None:
        raise TypeError(f"cannot read text from {type(item).__name__}: expected str, mapping or an object with .text")
    return str(text)


def item_meta(item: Any) -> Mapping[str, Any]:
    """The item's metadata: `.meta`, a mapping's `"meta"`, or the mapping itself (jsonl rows)."""
    if isinstance(item, str):
        return {}
    if isinstance(item, Mapping):
        meta = item.get("meta")
        return meta if isinstance(meta, Mapping) else item
    meta = getattr(item, "meta", None)
    return meta if isinstance(meta, Mapping) else {}


def item_id(item: Any, index: int) -> str:
    """A stable id for reporting samples: `.id` / `"id"` when present, else the position."""
    if isinstance(item, Mapping):
        value = item.get("id")
    else:
        value = getattr(item, "id", None)
    return str(index) if value is None else str(value)


def item_field(item: Any, name: str, *, fallback_text: bool = False) -> Any:
    """`meta[name]`; with `fallback_text`, the item's text when the field is absent."""
    meta = item_meta(item)
    if name in meta:
        return meta[name]
    if fallback_text:
        return item_text(item)
    raise KeyError(f"item is missing meta[{name!r}] (has: {sorted(meta)})")
