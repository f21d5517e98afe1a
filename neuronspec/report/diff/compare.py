"""The whole diff of two sides: spec changes and the stages they invalidate, metric and derived
deltas, neuron-set sizes and overlaps — one typed `Diff`, what `--json` prints."""

from __future__ import annotations

from typing import Any

from neuronspec.plan.kinds import EVAL_KINDS, Evaluation, LmEvalStage
from neuronspec.report.diff.model import (DerivedRow, Diff, MetricRow, MetricSide, Missing, SetRow, SpecRow, StageCounts,
                                          StageGroups)
from neuronspec.report.diff.sides import Side, order, stage_groups
from neuronspec.report.diff.spec import spec_changes
from neuronspec.report.diff.whatif import attribute, differs, stage_keys
from neuronspec.report.model import CI, Cell
from neuronspec.report.results import eval_metric
from neuronspec.report.results import evaluation as evaluation_of


def _ci_overlap(x: CI | None, y: CI | None) -> bool | None:
    if not x or not y:
        return None
    return not (x[1] < y[0] or y[1] < x[0])


def _metric_rows(a: Side, b: Side, show_all: bool) -> list[MetricRow]:
    rows = []
    for sid in order(a, b):
        ia, ib = a.stages.get(sid), b.stages.get(sid)
        info = ib or ia
        assert info is not None
        if info.kind not in EVAL_KINDS or (not show_all and ia is not None and ib is not None and ia.key == ib.key):
            continue
        ra, rb = (a.cell(sid) if ia else None), (b.cell(sid) if ib else None)
        if (ia and ra is None) or (ib and rb is None):  # not run yet on a side that has it: reported as missing
            continue
        va, vb = (ra.value if ra else None), (rb.value if rb else None)
        delta = vb - va if va is not None and vb is not None else None
        overlap = _ci_overlap(ra.ci if ra else None, rb.ci if rb else None)
        either = rb or ra
        rows.append(MetricRow(
            stage=sid, evaluation=info.evaluation, metric=either.metric if either else None,
            higher_is_better=either.higher_is_better if either else None,
            a=None if ra is None else MetricSide(value=va, ci=ra.ci), b=None if rb is None else MetricSide(value=vb, ci=rb.ci),
            delta=delta, relative=100.0 * delta / va if delta is not None and va else None,
            outside_noise=(overlap is False) and delta != 0))
    return rows


def _cells(side: Side, evaluation: str) -> tuple[str | None, list[Cell]]:
    kind, cells = None, []
    for sid, s in side.stages.items():
        if s.kind not in EVAL_KINDS or s.evaluation != evaluation:
            continue
        c = side.cell(sid)
        if c is None:
            continue
        if isinstance(s.spec, (Evaluation, LmEvalStage)):
            kind = eval_metric(s)
        else:  # a record from before specs were kept: its results name the evaluation's metric
            recorded = side.recorded(sid)
            kind = recorded.evaluations[evaluation].metric if recorded and evaluation in recorded.evaluations else kind
        cells.append(c)
    return kind, cells


def _derived_rows(a: Side, b: Side, metric_rows: list[MetricRow], show_all: bool) -> list[DerivedRow]:
    rows = []
    for evaluation in dict.fromkeys(r.evaluation for r in metric_rows if r.evaluation):
        (ka, ca), (kb, cb) = _cells(a, evaluation), _cells(b, evaluation)
        da = evaluation_of(ka, ca, a.study.report.baseline_language, resamples=0).arms if ka else {}  # Δs only: no CIs
        db = evaluation_of(kb, cb, b.study.report.baseline_language, resamples=0).arms if kb else {}
        base = b.study.report.baseline_language
        for arm in list(db) + [x for x in da if x not in db]:
            if (arm not in da and a.study.arm(arm)) or (arm not in db and b.study.arm(arm)):
                continue  # the arm has no results yet on a side that has it
            for quantity, label in (("delta_eng", f"Δ{base}"), ("delta_n_eng", f"Δn-{base}"), ("delta", "Δ")):
                x, y = getattr(da.get(arm), quantity, None), getattr(db.get(arm), quantity, None)
                if x is None and y is None or (not show_all and x == y):
                    continue
                rows.append(DerivedRow(evaluation=evaluation, metric=kb or ka, arm=arm, quantity=quantity, label=label,
                                       a=x, b=y, delta=y - x if x is not None and y is not None else None))
    return rows


def _layer_changes(ca: Any, cb: Any) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for site in list(ca or {}) + [s for s in (cb or {}) if s not in (ca or {})]:
        la, lb = (ca or {}).get(site, {}), (cb or {}).get(site, {})
        for layer in sorted(set(la) | set(lb), key=int):
            x, y = int(la.get(layer, 0)), int(lb.get(layer, 0))
            if x != y:
                out.setdefault(site, {})[str(layer)] = (x, y)
    return out


def _set_rows(a: Side, b: Side, show_all: bool) -> list[SetRow]:
    rows = []
    for sid in order(a, b):
        ia, ib = a.stages.get(sid), b.stages.get(sid)
        if ia is None or ib is None or ib.kind not in ("sets", "mask") or (not show_all and ia.key == ib.key):
            continue
        fa = {(n, lang): (f, c) for n, lang, f, c in a.set_counts(sid)}
        fb = {(n, lang): (f, c) for n, lang, f, c in b.set_counts(sid)}
        if not fa or not fb:
            continue
        ea, eb = a.entry(sid), b.entry(sid)
        for name, lang in list(fb) + [k for k in fa if k not in fb]:
            xa, xb = fa.get((name, lang)), fb.get((name, lang))
            overlap: dict[str, Any] = {}
            ca, cb = (xa[1] if xa else None), (xb[1] if xb else None)
            if ea is not None and eb is not None and xa and xb and (ea / xa[0]).exists() and (eb / xb[0]).exists():
                from neuronspec.models.masks import NeuronSet

                sa, sb = NeuronSet.load(ea / xa[0]), NeuronSet.load(eb / xb[0])
                ca, cb = sa.per_layer_counts(), sb.per_layer_counts()  # int layer keys on both sides
                overlap = {"jaccard": sa.jaccard(sb), "only_a": (sa - sb).count(), "only_b": (sb - sa).count()}
            na, nb = (_total(ca) if xa else None), (_total(cb) if xb else None)
            row = SetRow(stage=sid, set=name, lang=lang, a=na, b=nb, delta=nb - na if na is not None and nb is not None else None,
                         layers=_layer_changes(ca, cb), **overlap)
            if show_all or row.delta != 0 or row.layers or (row.jaccard is not None and row.jaccard < 1):
                rows.append(row)
    return rows


def _total(counts: Any) -> int:
    return sum(int(v) for layers in (counts or {}).values() for v in layers.values())


def diff_sides(a: Side, b: Side, show_all: bool = False) -> Diff:
    """Everything `neuronspec diff` shows."""
    changes = spec_changes(a.study.model_dump(mode="json"), b.study.model_dump(mode="json"))
    known = bool(a.stages) and bool(b.stages)
    ka, kb = stage_keys(a.stages) or {}, stage_keys(b.stages) or {}
    differing = differs(ka, kb) if known else set()
    hits, combined = attribute(a, b, changes, differing) if known else ([], set())
    spec = [SpecRow(field=c.dotted, op=c.op, a=c.old, b=c.new, stages=hits[i] if hits else StageGroups())
            for i, c in enumerate(changes)]
    rest = differing - {sid for groups in hits for sid in groups.all()}
    if rest & combined:  # e.g. a new language × a new arm: neither change alone makes eval/ARM/LANG
        spec.append(SpecRow(field="(the changes above, together)", op="other", a=None, b=None,
                            stages=stage_groups(rest & combined, a, b)))
    if rest - combined:  # stage keys differ although no study field explains them
        why = []
        if a.model != b.model:
            why.append("model identity (the weights changed)")
        if a.code_versions and b.code_versions and a.code_versions != b.code_versions:
            why.append("stage code versions")
        model_changed = a.model != b.model
        spec.append(SpecRow(field="; ".join(why) or "(inputs outside the study: corpus or model files)", op="other",
                            a=a.model if model_changed else None, b=b.model if model_changed else None,
                            stages=stage_groups(rest - combined, a, b)))
    metrics = _metric_rows(a, b, show_all) if known else []
    sets = _set_rows(a, b, show_all) if known else []
    notes = [n for n in (a.note, b.note) if n]
    return Diff(a=a.summary(), b=b.summary(), spec=spec,
                stages=StageCounts(**stage_groups(differing, a, b).model_dump(), unchanged=len(set(ka) & set(kb) - differing)),
                missing=Missing(a=a.missing(), b=b.missing()), metrics=metrics,
                derived=_derived_rows(a, b, metrics, show_all) if known else [], sets=sets, notes=notes,
                identical=not (spec or differing or metrics or sets or notes))
