"""A semantic diff of two validated studies (`Study.model_dump` trees): arms matched by name."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Named:
    """A list item matched by its `name` (arms), not by position."""

    name: str


Segment = str | int | Named


@dataclass
class Change:
    path: tuple[Segment, ...]
    op: str  # changed | added | removed | reordered
    old: Any
    new: Any
    old_missing: bool = False  # the key is absent on A's side (a dict entry, not a None field)
    new_missing: bool = False

    @property
    def dotted(self) -> str:
        out = ""
        for seg in self.path:
            if isinstance(seg, Named):
                out += f"[{seg.name}]"
            elif isinstance(seg, int):
                out += f"[{seg}]"
            else:
                out += ("." if out else "") + seg
        return out or "(study)"


def _named_list(value: Any) -> bool:
    if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
        return False
    names = [v["name"] for v in value]
    return len(names) == len(set(names))


def spec_changes(a: Any, b: Any, path: tuple[Segment, ...] = ()) -> list[Change]:
    """Field-level differences of two `model_dump(mode='json')` trees; arms are matched by name."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Change] = []
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                out.append(Change(path + (key,), "removed", a[key], None, new_missing=True))
            elif key not in a:
                out.append(Change(path + (key,), "added", None, b[key], old_missing=True))
            else:
                out += spec_changes(a[key], b[key], path + (key,))
        return out
    if _named_list(a) and _named_list(b):
        an, bn = {v["name"]: v for v in a}, {v["name"]: v for v in b}
        out = []
        for name, item in an.items():
            if name not in bn:
                out.append(Change(path + (Named(name),), "removed", item, None, new_missing=True))
            else:
                out += spec_changes(item, bn[name], path + (Named(name),))
        out += [Change(path + (Named(n),), "added", None, item, old_missing=True) for n, item in bn.items() if n not in an]
        order_a, order_b = [n for n in an if n in bn], [n for n in bn if n in an]
        if order_a != order_b:
            out.append(Change(path, "reordered", order_a, order_b))
        return out
    if a == b:
        return []
    if a is None and isinstance(b, (dict, list)):  # an optional section switched on (detect.plnd: null → {...})
        return [Change(path, "added", a, b)]
    if b is None and isinstance(a, (dict, list)):
        return [Change(path, "removed", a, b)]
    return [Change(path, "changed", a, b)]


def apply_change(data: dict[str, Any], change: Change, reverse: bool = False) -> dict[str, Any]:
    """A copy of `data` with `change` applied (A → B), or undone (`reverse`: B → A)."""
    out = copy.deepcopy(data)
    value, missing = (change.old, change.old_missing) if reverse else (change.new, change.new_missing)
    node: Any = out
    for seg in change.path[:-1]:
        node = node[_index(node, seg)]
    last = change.path[-1] if change.path else None
    if change.op == "reordered":
        items = node[last]
        by_name = {v["name"]: v for v in items}
        node[last] = [by_name[n] for n in value] + [v for v in items if v["name"] not in value]
    elif isinstance(last, Named):
        if missing:
            node.pop(_index(node, last))
        else:
            node.append(copy.deepcopy(value))
    elif missing:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)
    return out


def _index(node: Any, seg: Segment) -> Any:
    if isinstance(seg, Named):
        return next(i for i, v in enumerate(node) if v.get("name") == seg.name)
    return seg
