"""The two sides of a diff: a study file, a study at a git revision, or a past run (its record)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import ConfigDict, ValidationError

from neuronspec.paths import study_store
from neuronspec.plan import ids
from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.kinds import EVAL_KINDS, KINDS, Evaluation, LmEvalStage, StageSpec, artifacts
from neuronspec.plan.store import CorruptEntry, Store
from neuronspec.report.diff.model import StageGroups
from neuronspec.report.model import Cell, LayerCounts, MaskCount, NeuronSetInfo, Results, RunResults, StudyResults
from neuronspec.report.records import find_run, git, read_record, results_from_record
from neuronspec.report.results import stage_cell
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
            self._results[sid] = (json.loads((path / artifacts.RESULT).read_text(encoding="utf-8"))
                                  if path is not None and (path / artifacts.RESULT).exists() else None)
        return self._results[sid]

    def recorded(self, sid: str) -> RunResults | None:
        """A run side's results for the model of stage `sid` (MODEL:STAGE in a study with several)."""
        if self.record is None:
            return None
        if self._recorded is None:
            self._recorded = results_from_record(self.record)
        if isinstance(self._recorded, StudyResults):
            model = ids.unqualified(sid)[0]
            return self._recorded.variants.get(model) if model else None
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
            return [(name, lang, artifacts.set_file(name, lang if info.family else None), counts)
                    for name, info in (sets or {}).items() for lang, counts in info.groups()]
        if result is not None:
            masks = [MaskCount(arm=stage.arm, draw=stage.draw, lang=lang, **c) for lang, c in result["counts"].items()]
        else:
            masks = [m for m in (recorded.masks if recorded else []) if m.arm == stage.arm and m.draw == stage.draw]
        return [(f"mask:{stage.arm}", m.lang, artifacts.set_file(artifacts.MASK, None if m.lang == "*" else m.lang),
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
        facts["draw"] = s["draw"] if "draw" in s else getattr(spec, "draw", None)  # records before stages kept their draw
        if facts["evaluation"] is None and facts["arm"] is None:  # records before stages carried typed facts
            parts = ids.unqualified(sid)[1].split("/")
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


def order(a: Side, b: Side) -> list[str]:
    return list(b.stages) + [sid for sid in a.stages if sid not in b.stages]


def stage_groups(ids: set[str], a: Side, b: Side) -> StageGroups:
    both = order(a, b)
    return StageGroups(changed=[s for s in both if s in ids and s in a.stages and s in b.stages],
                       added=[s for s in both if s in ids and s not in a.stages],
                       removed=[s for s in both if s in ids and s not in b.stages])


