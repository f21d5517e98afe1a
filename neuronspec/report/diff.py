"""`neuronspec diff A B`: what changed between two studies or runs, what it invalidates, what moved.

A *side* is a study file, a study at a git revision (`REV:path`, read with `git show`)
or a past run (its record). Three comparisons, DVC-style (`A | B | Δ`):

* **spec** — a semantic diff of the validated studies (`Study.model_dump`), arms matched
  by name; for every changed field, the stages it invalidates. Those are found by
  compiling A with just that one change applied and comparing stage keys (if the change
  cannot stand alone — say a new arm naming a new set — B with just that change reverted;
  failing both, the stages whose `origin` is that field, and what depends on them).
* **metrics** — the headline metric of every evaluation stage whose key differs, with
  confidence intervals; a Δ is marked when the two intervals do not overlap. Plus the
  derived ΔEng / Δn-Eng / Δ per arm.
* **neuron sets** — sizes per set and language, the Jaccard overlap of A's and B's set,
  and which layers changed (from the `sets` and `mask/*` stages' NeuronSet files).

`diff_sides` returns one JSON-able dict; `diff_tables` renders it with the one `Table`
type, so `--json`, `--md` and the terminal show the same numbers.
"""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from neuronspec.paths import study_store
from pydantic import ConfigDict, ValidationError

from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.kinds import EVAL_KINDS, KINDS, Evaluation, LmEvalStage, StageSpec
from neuronspec.plan.store import CorruptEntry, Store
from neuronspec.report.model import Cell, LayerCounts, MaskCount, NeuronSetInfo, Results, RunResults, StudyResults
from neuronspec.report.records import find_run, git, read_record, results_from_record
from neuronspec.report.results import eval_metric, stage_cell
from neuronspec.report.results import evaluation as evaluation_of
from neuronspec.report.tables import Table, fmt
from neuronspec.spec import LoadedStudy, Study, StudyError, load_study


class DiffError(Exception):
    """A side cannot be read (not a file, revision or run id; git failed): the CLI exits 2."""


# -- sides --------------------------------------------------------------------------------
@dataclass
class Side:
    label: str  # what the user typed (or REV:FILE), used in headers and error messages
    kind: str  # "file" | "rev" | "run"
    study: Study
    stages: dict[str, Stage]  # plan order; a run's stages carry the keys it recorded
    store: Store | None
    model: dict[str, Any] | None = None  # model identity the keys were computed with
    code_versions: dict[str, str] = field(default_factory=dict)
    loaded: LoadedStudy | None = None  # study sides: what `--run` runs
    record: dict[str, Any] | None = None  # run sides
    git_info: dict[str, Any] | None = None  # rev sides: the commit it was read from
    note: str | None = None  # why stages are unknown (the study could not be compiled)
    _results: dict[str, Any] = field(default_factory=dict, repr=False)
    _recorded: Results | None = field(default=None, repr=False)

    def entry(self, sid: str) -> Path | None:
        """The verified store folder of stage `sid`, or None."""
        info = self.stages.get(sid)
        if info is None or self.store is None:
            return None
        try:
            return self.store.get(info.key).path
        except (KeyError, CorruptEntry):
            return None

    def result(self, sid: str) -> dict[str, Any] | None:
        """A stage's result.json from the store (None where the store no longer has it)."""
        if sid not in self._results:
            path = self.entry(sid)
            self._results[sid] = (json.loads((path / "result.json").read_text(encoding="utf-8"))
                                  if path is not None and (path / "result.json").exists() else None)
        return self._results[sid]

    def recorded(self, sid: str) -> RunResults | None:
        """A run side's results for the model of stage `sid` (MODEL:STAGE in a study with several)."""
        if self.record is None:
            return None
        if self._recorded is None:
            self._recorded = results_from_record(self.record)
        if isinstance(self._recorded, StudyResults):
            return self._recorded.variants.get(sid.split(":", 1)[0]) if ":" in sid else None
        return self._recorded

    def cell(self, sid: str) -> Cell | None:
        """An evaluation stage's cell: from the store, else from what the run record kept."""
        stage = self.stages.get(sid)
        if stage is None:
            return None
        result = self.result(sid)
        spec = stage.spec
        if result is not None:
            return stage_cell(stage, result) if isinstance(spec, (Evaluation, LmEvalStage)) else Cell.model_validate(result)
        recorded = self.recorded(sid)
        ev = recorded.evaluations.get(stage.evaluation or "") if recorded else None
        if ev is None:
            return None
        if isinstance(spec, (Evaluation, LmEvalStage)):
            return ev.cell(spec.arm, spec.draw, spec.mask_lang, spec.lang)
        return next((c for c in ev.cells if c.arm == stage.arm and c.lang == stage.lang), None)

    def set_counts(self, sid: str) -> list[tuple[str, str, str, LayerCounts]]:
        """(set name, language or '*', file name, per-layer counts) of a sets/mask stage."""
        stage = self.stages[sid]
        result = self.result(sid)
        recorded = self.recorded(sid) if result is None else None
        if stage.kind == "sets":
            sets = ({n: NeuronSetInfo.model_validate(i) for n, i in result.items()} if result is not None
                    else recorded.sets if recorded else None)
            return [(name, lang, f"{name}.{lang}.safetensors" if info.family else f"{name}.safetensors", counts)
                    for name, info in (sets or {}).items() for lang, counts in info.groups()]
        if result is not None:
            masks = [MaskCount(arm=stage.arm, draw=stage.draw, lang=lang, **c) for lang, c in result["counts"].items()]
        else:
            masks = [m for m in (recorded.masks if recorded else []) if m.arm == stage.arm and m.draw == stage.draw]
        return [(f"mask:{stage.arm}", m.lang, "mask.safetensors" if m.lang == "*" else f"mask.{m.lang}.safetensors",
                 m.per_layer) for m in masks]

    def missing(self) -> list[str]:
        """Stages with no result yet (study sides only: a run's stages all finished)."""
        if self.kind == "run" or self.store is None:
            return []
        return [sid for sid, s in self.stages.items() if not (self.store.entry_dir(s.key) / "meta.json").exists()]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "kind": self.kind, "study": self.study.name}
        if self.record is not None:
            out["run_id"] = self.record.get("run_id")
        if self.git_info is not None:
            out["git"] = self.git_info
        return out


def _compile(loaded: LoadedStudy) -> Plan:
    """The study's stages; a multi-model study's as one plan of `MODEL:STAGE` ids."""
    from neuronspec.plan.variants import compile_variants, merged_plan

    return merged_plan(compile_variants(loaded))


def _study_side(label: str, kind: str, loaded: LoadedStudy, store_path: Path, store: str | Path | None,
                git_info: dict[str, Any] | None = None) -> Side:
    side = Side(label, kind, loaded.study, {}, Store(study_store(store_path, store)), loaded=loaded, git_info=git_info)
    try:
        plan = _compile(loaded)
    except StudyError:
        raise
    except Exception as exc:  # e.g. a hub model that cannot be resolved offline: the spec diff still works
        side.note = f"{label}: cannot compile ({type(exc).__name__}: {exc}); stage and result diffs skipped"
        return side
    side.stages, side.model, side.code_versions = plan.stages, plan.model_identity, plan.code_versions
    return side


def _run_side(folder: Path) -> Side:
    record = read_record(folder)
    try:
        study = Study.model_validate(record["study"])
    except Exception as exc:
        raise DiffError(f"run {folder.name}: its recorded study no longer validates ({exc})") from None
    stages: dict[str, Stage] = {}
    plain = record.get("stages", {})
    fresh: dict[str, Stage] = {}
    if any("spec" not in s for s in plain.values()):  # records before specs were kept: recompile for spec/origin
        plan = compile_dict(record["study"])
        fresh = plan.stages if plan is not None else {}
    order = [sid for sid in record.get("stage_order", []) if sid in plain]
    for sid in order + sorted(sid for sid in plain if sid not in order):
        s, f = plain[sid], fresh.get(sid)
        spec = _recorded_spec(s["kind"], s["spec"]) if "spec" in s else (f.spec if f else RecordedSpec())
        facts = {k: s[k] if k in s else getattr(f, k) if f else None for k in ("lang", "arm", "evaluation")}
        if facts["evaluation"] is None and facts["arm"] is None:  # records before stages carried typed facts
            parts = sid.split(":", 1)[-1].split("/")
            if s["kind"] in EVAL_KINDS:
                facts["evaluation"] = parts[1]
            elif s["kind"] in ("mask", "enhance"):
                facts["arm"] = parts[1]
        stages[sid] = Stage(sid, s["kind"], spec, tuple(s.get("deps", f.deps if f else ())),
                            model_bound=s.get("model_bound", f.model_bound if f else False), key=s["key"],
                            origin=tuple(s.get("origin", f.origin if f else ())), **facts)
    return Side(record["run_id"], "run", study, stages, Store(folder.parent.parent), model=record.get("model"),
                code_versions=record.get("code_versions") or {}, record=record, git_info=record.get("git"))


class RecordedSpec(StageSpec):
    """A stage spec a run recorded in a shape this version's kind no longer has (kept as it was)."""

    model_config = ConfigDict(frozen=True, extra="allow")


def _recorded_spec(kind: str, data: dict[str, Any]) -> StageSpec:
    try:
        return KINDS[kind].spec.model_validate(data)
    except (KeyError, ValidationError):
        return RecordedSpec(**data)


def check_rev(rev: str) -> str:
    """A revision as the user gave it, refused when git could read it as an option (or it is no name)."""
    if not rev or rev.startswith("-") or any(c.isspace() or ord(c) < 32 for c in rev):
        raise DiffError(f"{rev!r} is not a git revision (revisions cannot start with '-' or contain spaces)")
    return rev


def _git_show(spec: str, cwd: Path) -> str:
    check_rev(spec.partition(":")[0])
    try:
        # --end-of-options: whatever `spec` says, git reads it as a revision, never as an option
        done = subprocess.run(["git", "show", "--end-of-options", spec], cwd=cwd, capture_output=True, text=True,
                              timeout=30)
    except OSError as exc:
        raise DiffError(f"{spec}: cannot run git ({exc})") from None
    if done.returncode != 0:
        raise DiffError(f"{spec}: {done.stderr.strip() or 'git show failed'}")
    return done.stdout


def rev_side(rev: str, file: str | Path, store: str | Path | None = None) -> Side:
    """The study `file` (a working-tree path) as it was at git revision `rev`; labelled `REV:FILE`."""
    path = Path(file)
    cwd = path.parent if str(path.parent) else Path(".")
    if not cwd.is_dir():
        raise DiffError(f"{rev}:{file}: folder {cwd} does not exist")
    text = _git_show(f"{rev}:./{path.name}", cwd)
    return _rev_side(f"{rev}:{file}", rev, text, path, cwd, store)


def _rev_side(label: str, rev: str, text: str, worktree: Path, cwd: Path, store: str | Path | None) -> Side:
    loaded = load_study(label, text=text)  # errors read REV:path:LINE:COL
    top = git(cwd, "rev-parse", "--show-toplevel")
    try:
        rel = str(worktree.resolve().relative_to(Path(top).resolve())) if top else str(worktree)
    except ValueError:  # REV:../outside — keep the path as given
        rel = str(worktree)
    info = {"commit": git(cwd, "rev-parse", "--verify", "--end-of-options", f"{check_rev(rev)}^{{commit}}"), "rev": rev, "path": rel, "study_dirty": False}
    # A revision's results live where the working-tree study keeps its store.
    return _study_side(label, "rev", loaded, worktree, store, git_info=info)


def resolve_side(ref: str, *, stores: Sequence[Path] = (), store: str | Path | None = None) -> Side:
    """A study file, `REV:path` (path as git reads it: from the repository root, or ./relative), or a run id."""
    path = Path(ref)
    if path.is_file() and path.name != "record.json":
        return _study_side(ref, "file", load_study(path), path, store)
    rev, sep, rel = ref.partition(":")
    if sep and rev and rel and not path.exists():
        cwd = Path.cwd()
        text = _git_show(ref, cwd)
        if rel.startswith(("./", "../")):
            worktree = cwd / rel
        else:
            top = git(cwd, "rev-parse", "--show-toplevel")
            worktree = Path(top or ".") / rel
        return _rev_side(ref, rev, text, worktree, cwd, store)
    candidates = ([Path(store)] if store else []) + list(stores)
    try:
        folder = find_run(ref, candidates)
    except ValueError as exc:
        raise DiffError(str(exc)) from None
    if folder is None:
        where = ", ".join(str(s) for s in dict.fromkeys(Path(c).resolve() for c in candidates)) or "no store"
        raise DiffError(f"{ref!r} is not a study file, a REV:path, or a run id (looked for runs in {where})")
    return _run_side(folder)


# -- spec diff ----------------------------------------------------------------------------
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


def compile_dict(data: dict[str, Any]) -> Plan | None:
    """Compile a study given as plain data; None if it does not validate or compile on its own."""
    from ruamel.yaml.comments import CommentedMap

    from neuronspec.spec.loader import SourceMap
    from neuronspec.spec.references import check_references

    try:
        study = Study.model_validate(data)
        if check_references(study):
            return None
        return _compile(LoadedStudy(study, None, SourceMap(tree=CommentedMap()), ""))
    except (ValidationError, StudyError):  # the study no longer validates or compiles on its own
        return None


def _keys(stages: dict[str, Stage] | None) -> dict[str, str] | None:
    return None if stages is None else {sid: s.key for sid, s in stages.items()}


def _differs(x: dict[str, str], y: dict[str, str]) -> set[str]:
    return {sid for sid in set(x) | set(y) if x.get(sid) != y.get(sid)}


def _origin_path(origin: tuple[Any, ...], study: Study) -> tuple[Segment, ...]:
    """A stage origin with arm positions replaced by arm names, to compare with change paths."""
    out: list[Segment] = list(origin)
    if len(out) >= 2 and out[0] == "arms" and isinstance(out[1], int) and out[1] < len(study.arms):
        out[1] = Named(study.arms[out[1]].name)
    return tuple(out)


def _downstream(roots: set[str], sides: list[Side]) -> set[str]:
    hit = set(roots)
    for side in sides:
        for sid, s in side.stages.items():  # plan order: deps come first
            if any(d in hit for d in s.deps):
                hit.add(sid)
    return hit


def _fresh_keys(side: Side, data: dict[str, Any]) -> dict[str, str] | None:
    """Stage keys to compare counterfactuals with: a run's recorded keys may predate a model or code change."""
    if side.kind != "run":
        return _keys(side.stages)
    plan = compile_dict(data)
    return _keys(plan.stages) if plan is not None else None


def attribute(a: Side, b: Side, changes: list[Change], differing: set[str]) -> tuple[list[dict[str, list[str]]], set[str]]:
    """For each change, the differing stages it invalidates on its own (changed key / new / gone), and the
    differing stages that only all the changes together explain."""
    order = _order(a, b)

    def grouped(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
        return {"changed": [s for s in order if s in differing and s in before and s in after and before[s] != after[s]],
                "added": [s for s in order if s in differing and s in after and s not in before],
                "removed": [s for s in order if s in differing and s in before and s not in after]}

    if not changes or not differing:
        return [grouped({}, {}) for _ in changes], set()
    a_data, b_data = a.study.model_dump(mode="json"), b.study.model_dump(mode="json")
    fresh_a, fresh_b = _fresh_keys(a, a_data), _fresh_keys(b, b_data)
    out = []
    for change in changes:
        groups = None
        # A with just this change (before: A, after: the trial); else B with just it undone (before: the trial).
        for data, ref, reverse in ((a_data, fresh_a, False), (b_data, fresh_b, True)):
            trial = compile_dict(apply_change(data, change, reverse)) if ref is not None else None
            if trial is not None:
                keys = _keys(trial.stages) or {}
                groups = grouped(keys, ref) if reverse else grouped(ref, keys)  # type: ignore[arg-type]
                break
        if groups is None:  # the change cannot stand alone: stages that come from that field, and their dependants
            roots = {sid for side in (a, b) for sid, s in side.stages.items()
                     if sid in differing and _prefix_related(_origin_path(s.origin, side.study), change.path)}
            groups = _stage_groups(_downstream(roots, [a, b]) & differing, a, b)
        out.append(groups)
    combined: set[str] = set()
    every = compile_dict(b_data) if fresh_a is not None else None  # A with every change = B, compiled afresh
    if every is not None:
        ka, kb, kall = _keys(a.stages) or {}, _keys(b.stages) or {}, _keys(every.stages) or {}
        combined = {s for s in differing if kall.get(s) == kb.get(s) and fresh_a.get(s) == ka.get(s)}  # type: ignore[union-attr]
    return out, combined


def _prefix_related(x: tuple[Segment, ...], y: tuple[Segment, ...]) -> bool:
    n = min(len(x), len(y))
    return n > 0 and x[:n] == y[:n]


# -- the whole diff -------------------------------------------------------------------------
def _order(a: Side, b: Side) -> list[str]:
    return list(b.stages) + [sid for sid in a.stages if sid not in b.stages]


def _stage_groups(ids: set[str], a: Side, b: Side) -> dict[str, list[str]]:
    order = _order(a, b)
    return {
        "changed": [s for s in order if s in ids and s in a.stages and s in b.stages],
        "added": [s for s in order if s in ids and s not in a.stages],
        "removed": [s for s in order if s in ids and s not in b.stages],
    }


def _ci_overlap(x: list[float] | None, y: list[float] | None) -> bool | None:
    if not x or not y:
        return None
    return not (x[1] < y[0] or y[1] < x[0])


def _metric_rows(a: Side, b: Side, show_all: bool) -> list[dict[str, Any]]:
    rows = []
    for sid in _order(a, b):
        ia, ib = a.stages.get(sid), b.stages.get(sid)
        info = ib or ia
        assert info is not None
        if info.kind not in EVAL_KINDS or (not show_all and ia is not None and ib is not None and ia.key == ib.key):
            continue
        ra, rb = (a.cell(sid) if ia else None), (b.cell(sid) if ib else None)
        if (ia and ra is None) or (ib and rb is None):  # not run yet on a side that has it: reported as missing
            continue
        va, vb = getattr(ra, "value", None), getattr(rb, "value", None)
        delta = vb - va if va is not None and vb is not None else None
        overlap = _ci_overlap(getattr(ra, "ci", None), getattr(rb, "ci", None))
        either = rb or ra
        rows.append({
            "stage": sid, "evaluation": info.evaluation, "metric": either.metric if either else None,
            "higher_is_better": either.higher_is_better if either else None,
            "a": None if ra is None else {"value": va, "ci": ra.ci},
            "b": None if rb is None else {"value": vb, "ci": rb.ci},
            "delta": delta, "relative": 100.0 * delta / va if delta is not None and va else None,
            "outside_noise": (overlap is False) and delta != 0,
        })
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


def _derived_rows(a: Side, b: Side, metric_rows: list[dict[str, Any]], show_all: bool) -> list[dict[str, Any]]:
    rows = []
    for evaluation in dict.fromkeys(r["evaluation"] for r in metric_rows):
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
                rows.append({"evaluation": evaluation, "metric": kb or ka, "arm": arm, "quantity": quantity, "label": label,
                             "a": x, "b": y, "delta": y - x if x is not None and y is not None else None})
    return rows


def _layer_changes(ca: Any, cb: Any) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for site in list(ca or {}) + [s for s in (cb or {}) if s not in (ca or {})]:
        la, lb = (ca or {}).get(site, {}), (cb or {}).get(site, {})
        for layer in sorted(set(la) | set(lb), key=int):
            x, y = int(la.get(layer, 0)), int(lb.get(layer, 0))
            if x != y:
                out.setdefault(site, {})[str(layer)] = [x, y]
    return out


def _set_rows(a: Side, b: Side, show_all: bool) -> list[dict[str, Any]]:
    rows = []
    for sid in _order(a, b):
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
            row: dict[str, Any] = {"stage": sid, "set": name, "lang": lang, "a": None, "b": None, "jaccard": None,
                                   "only_a": None, "only_b": None}
            ca, cb = (xa[1] if xa else None), (xb[1] if xb else None)
            if ea is not None and eb is not None and xa and xb and (ea / xa[0]).exists() and (eb / xb[0]).exists():
                from neuronspec.models.masks import NeuronSet

                sa, sb = NeuronSet.load(ea / xa[0]), NeuronSet.load(eb / xb[0])
                ca, cb = sa.per_layer_counts(), sb.per_layer_counts()  # int layer keys on both sides
                row.update(jaccard=sa.jaccard(sb), only_a=(sa - sb).count(), only_b=(sb - sa).count())
            row["a"] = _total(ca) if xa else None
            row["b"] = _total(cb) if xb else None
            row["delta"] = row["b"] - row["a"] if xa and xb else None
            row["layers"] = _layer_changes(ca, cb)
            if show_all or row["delta"] != 0 or row["layers"] or (row["jaccard"] is not None and row["jaccard"] < 1):
                rows.append(row)
    return rows


def _total(counts: Any) -> int:
    return sum(int(v) for layers in (counts or {}).values() for v in layers.values())


def diff_sides(a: Side, b: Side, show_all: bool = False) -> dict[str, Any]:
    """Everything `neuronspec diff` shows, as JSON-able data."""
    changes = spec_changes(a.study.model_dump(mode="json"), b.study.model_dump(mode="json"))
    known = bool(a.stages) and bool(b.stages)
    ka, kb = _keys(a.stages) or {}, _keys(b.stages) or {}
    differing = _differs(ka, kb) if known else set()
    hits, combined = attribute(a, b, changes, differing) if known else ([], set())
    spec = [{"field": c.dotted, "op": c.op, "a": c.old, "b": c.new,
             "stages": hits[i] if hits else {"changed": [], "added": [], "removed": []}} for i, c in enumerate(changes)]
    rest = differing - {sid for groups in hits for ids in groups.values() for sid in ids}
    if rest & combined:  # e.g. a new language × a new arm: neither change alone makes eval/ARM/LANG
        spec.append({"field": "(the changes above, together)", "op": "other", "a": None, "b": None,
                     "stages": _stage_groups(rest & combined, a, b)})
    if rest - combined:  # stage keys differ although no study field explains them
        why = []
        if a.model != b.model:
            why.append("model identity (the weights changed)")
        if a.code_versions and b.code_versions and a.code_versions != b.code_versions:
            why.append("stage code versions")
        spec.append({"field": "; ".join(why) or "(inputs outside the study: corpus or model files)",
                     "op": "other", "a": a.model if a.model != b.model else None, "b": b.model if a.model != b.model else None,
                     "stages": _stage_groups(rest - combined, a, b)})
    metrics = _metric_rows(a, b, show_all) if known else []
    out = {
        "a": a.summary(), "b": b.summary(), "spec": spec,
        "stages": {**_stage_groups(differing, a, b), "unchanged": len(set(ka) & set(kb) - differing)},
        "missing": {"a": a.missing(), "b": b.missing()},
        "metrics": metrics,
        "derived": _derived_rows(a, b, metrics, show_all) if known else [],
        "sets": _set_rows(a, b, show_all) if known else [],
        "notes": [n for n in (a.note, b.note) if n],
    }
    out["identical"] = not (spec or differing or metrics or out["sets"] or out["notes"])
    return out


# -- rendering ----------------------------------------------------------------------------
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


def _stages_cell(groups: dict[str, list[str]], universe: list[str]) -> str:
    parts = []
    if groups["changed"]:
        parts.append(compress(groups["changed"], universe))
    if groups["added"]:
        parts.append("new: " + compress(groups["added"], universe))
    if groups["removed"]:
        parts.append("gone: " + compress(groups["removed"], universe))
    return "; ".join(parts) or "—"


def _with_ci(side: dict[str, Any] | None) -> str:
    if side is None:
        return "–"
    ci = side.get("ci")
    return fmt(side["value"]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def diff_tables(d: dict[str, Any], a: Side, b: Side) -> list[Table]:
    la, lb = d["a"]["label"], d["b"]["label"]
    universe = _order(a, b)
    tables = []
    if d["spec"]:
        t = Table(f"spec: {la} → {lb}", ["field", "A", "B", "invalidates"])
        for c in d["spec"]:
            old, new = ("(absent)", _value(c["b"])) if c["op"] == "added" else (_value(c["a"]), "(absent)") if c["op"] == "removed" else (_value(c["a"]), _value(c["b"]))
            t.add(c["field"] + ("" if c["op"] in ("changed", "other") else f" ({c['op']})"), old, new, _stages_cell(c["stages"], universe))
        s = d["stages"]
        t.caption = (f"stages: {len(s['changed'])} changed, {len(s['added'])} new, {len(s['removed'])} gone, "
                     f"{s['unchanged']} unchanged")
        tables.append(t)
    by_eval: dict[str, list[dict[str, Any]]] = {}
    for r in d["metrics"]:
        by_eval.setdefault(r["evaluation"], []).append(r)
    for ev, rows in by_eval.items():
        metric = rows[0]["metric"]
        t = Table(f"{ev}: {metric} (95% CI)", ["stage", "A", "B", "Δ"])
        for r in rows:
            rel = f" ({fmt(r['relative'], 1, True)}%)" if r["relative"] is not None else ""
            t.add(r["stage"].split("/", 2)[2], _with_ci(r["a"]), _with_ci(r["b"]),
                  (fmt(r["delta"], 2, True) + rel if r["delta"] is not None else "–") + (" *" if r["outside_noise"] else ""))
            if r["outside_noise"]:
                t.bold.add((len(t.rows) - 1, 3))
        t.caption = "A: " + la + ", B: " + lb + "; * the confidence intervals do not overlap (a difference outside noise)"
        tables.append(t)
    if d["derived"]:
        t = Table("arms: change vs base (perplexity: %, others: points)", ["evaluation", "arm", "", "A", "B", "Δ"])
        for r in d["derived"]:
            t.add(r["evaluation"], r["arm"], r["label"], fmt(r["a"], 1, True), fmt(r["b"], 1, True), fmt(r["delta"], 1, True))
        tables.append(t)
    if d["sets"]:
        t = Table("neuron sets: A vs B", ["set", "language", "A", "B", "Δ", "Jaccard", "only A", "only B", "layers changed"])
        for r in d["sets"]:
            changes = [f"{site} L{layer} {x}→{y}" for site, layers in r["layers"].items() for layer, (x, y) in layers.items()]
            shown = ", ".join(changes[:4]) + (f", … (+{len(changes) - 4})" if len(changes) > 4 else "")
            t.add(r["set"], r["lang"], _int(r["a"]), _int(r["b"]), _int(r["delta"], True), fmt(r["jaccard"], 2),
                  _int(r["only_a"]), _int(r["only_b"]), shown or "—")
        tables.append(t)
    return tables


def _int(v: int | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+d}" if signed else str(v))


def messages(d: dict[str, Any], a: Side, b: Side) -> list[str]:
    """Plain-text lines to print after the tables: missing results, notes."""
    out = list(d["notes"])
    for side, universe in (("a", list(a.stages)), ("b", list(b.stages))):
        missing = d["missing"][side]
        if missing:
            label = d[side]["label"]
            out.append(f"{side.upper()} ({label}) has no results for {len(missing)} of {len(universe)} stages "
                       f"({compress(missing, universe)}); run it, or pass --run to run it before diffing")
    return out
