"""A `Diff` as tables (terminal and Markdown) and the notes printed after them."""

from __future__ import annotations

from typing import Any

from neuronspec.report.diff.model import Diff, MetricRow, MetricSide, StageGroups
from neuronspec.report.diff.sides import Side, order
from neuronspec.report.tables import Table, fmt


def compress(ids: list[str], universe: list[str]) -> str:
    """Sibling stages folded: `eval/ppl/early/* (9)` for a whole group, `eval/ppl/early/{en@fr,de@fr,fr@en}` for part of one."""
    groups: dict[str, list[str]] = {}
    for sid in ids:
        groups.setdefault(sid.rsplit("/", 1)[0] if "/" in sid else sid, []).append(sid)
    parts = []
    for prefix, members in groups.items():
        siblings = [s for s in universe if "/" in s and s.rsplit("/", 1)[0] == prefix]
        if len(members) <= 2 or prefix in members:
            parts += members
        elif len(members) == len(siblings):
            parts.append(f"{prefix}/* ({len(members)})")
        else:
            parts.append(f"{prefix}/{{{','.join(m.rsplit('/', 1)[1] for m in members)}}}")
    return ", ".join(parts)


def _flow(v: Any) -> str:
    """Compact YAML-flow text of a value, leaving out unset (null / empty) fields."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items() if x not in (None, "", [], {})) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _value(v: Any, limit: int = 80) -> str:
    text = "–" if v is None else _flow(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stages_cell(groups: StageGroups, universe: list[str]) -> str:
    parts = []
    if groups.changed:
        parts.append(compress(groups.changed, universe))
    if groups.added:
        parts.append("new: " + compress(groups.added, universe))
    if groups.removed:
        parts.append("gone: " + compress(groups.removed, universe))
    return "; ".join(parts) or "—"


def _with_ci(side: MetricSide | None) -> str:
    if side is None:
        return "–"
    return fmt(side.value) + (f" [{fmt(side.ci[0])}, {fmt(side.ci[1])}]" if side.ci else "")


def diff_tables(d: Diff, a: Side, b: Side) -> list[Table]:
    la, lb = a.label, b.label
    universe = order(a, b)
    tables = []
    if d.spec:
        t = Table(f"spec: {la} → {lb}", ["field", "A", "B", "invalidates"])
        for c in d.spec:
            old, new = (("(absent)", _value(c.b)) if c.op == "added" else (_value(c.a), "(absent)") if c.op == "removed"
                        else (_value(c.a), _value(c.b)))
            t.add(c.field + ("" if c.op in ("changed", "other") else f" ({c.op})"), old, new, _stages_cell(c.stages, universe))
        s = d.stages
        t.caption = f"stages: {len(s.changed)} changed, {len(s.added)} new, {len(s.removed)} gone, {s.unchanged} unchanged"
        tables.append(t)
    by_eval: dict[str | None, list[MetricRow]] = {}
    for r in d.metrics:
        by_eval.setdefault(r.evaluation, []).append(r)
    for ev, rows in by_eval.items():
        t = Table(f"{ev}: {rows[0].metric} (95% CI)", ["stage", "A", "B", "Δ"])
        for r in rows:
            rel = f" ({fmt(r.relative, 1, True)}%)" if r.relative is not None else ""
            t.add(r.stage.split("/", 2)[2], _with_ci(r.a), _with_ci(r.b),
                  (fmt(r.delta, 2, True) + rel if r.delta is not None else "–") + (" *" if r.outside_noise else ""))
            if r.outside_noise:
                t.bold.add((len(t.rows) - 1, 3))
        t.caption = "A: " + la + ", B: " + lb + "; * the confidence intervals do not overlap (a difference outside noise)"
        tables.append(t)
    if d.derived:
        t = Table("arms: change vs base (perplexity: %, others: points)", ["evaluation", "arm", "", "A", "B", "Δ"])
        for dr in d.derived:
            t.add(dr.evaluation, dr.arm, dr.label, fmt(dr.a, 1, True), fmt(dr.b, 1, True), fmt(dr.delta, 1, True))
        tables.append(t)
    if d.sets:
        t = Table("neuron sets: A vs B", ["set", "language", "A", "B", "Δ", "Jaccard", "only A", "only B", "layers changed"])
        for sr in d.sets:
            changes = [f"{site} L{layer} {x}→{y}" for site, layers in sr.layers.items() for layer, (x, y) in layers.items()]
            shown = ", ".join(changes[:4]) + (f", … (+{len(changes) - 4})" if len(changes) > 4 else "")
            t.add(sr.set, sr.lang, _int(sr.a), _int(sr.b), _int(sr.delta, True), fmt(sr.jaccard, 2),
                  _int(sr.only_a), _int(sr.only_b), shown or "—")
        tables.append(t)
    return tables


def _int(v: int | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+d}" if signed else str(v))


def messages(d: Diff, a: Side, b: Side) -> list[str]:
    """Plain-text lines to print after the tables: missing results, notes."""
    out = list(d.notes)
    for name, side, missing in (("A", a, d.missing.a), ("B", b, d.missing.b)):
        if missing:
            universe = list(side.stages)
            out.append(f"{name} ({side.label}) has no results for {len(missing)} of {len(universe)} stages "
                       f"({compress(missing, universe)}); run it, or pass --run to run it before diffing")
    return out
