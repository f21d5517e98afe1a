"""Run records: what ran, with what, and what came out — one folder per run.

`runs/RUN_ID/record.json` holds the resolved study (and its text), every stage's key,
spec, origin and status, timings, package and code versions, the model identity, the git
commit / dirty state of the study file, and the headline metric of every evaluation stage
with its confidence interval — so a result can always be traced to exactly what produced
it, and compared (`neuronspec diff`) or re-rendered (`neuronspec report`) after the
store has been garbage-collected.

`runs/index.jsonl` has one line per run (appended, so concurrent runs do not clobber
each other) for `neuronspec runs`; records missing from it are found by scanning.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neuronspec.fileio import write_json
from neuronspec.plan.store import INCOMING
from neuronspec.report.model import Results, parse_results, to_json

_PACKAGES = ("neuronspec", "torch", "transformers", "pydantic", "safetensors", "datasets")
INDEX = "index.jsonl"


def report_code() -> str:
    """A digest of the code that turns results into tables and figures (the same normalised-source
    digests as the stages' code fingerprints): a cached re-run reuses the last report only while
    this is unchanged."""
    from neuronspec.plan.fingerprint import modules_digest

    root = Path(__file__).resolve().parent
    modules = [".".join(("neuronspec", "report", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
               for p in sorted(root.rglob("*.py"))]
    return modules_digest([*modules, "neuronspec.plotting"])[:16]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git(cwd: Path, *args: str) -> str | None:
    """Output of a read-only git command, or None (no git, not a repository, failed)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: Path | None) -> dict[str, Any] | None:
    """Commit of the repository holding the study, the study's path in it, and whether the file differs from it."""
    if path is None or not path.exists():
        return None
    cwd = path.resolve().parent
    commit = git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = git(cwd, "status", "--porcelain", "--", path.resolve().name)
    top = git(cwd, "rev-parse", "--show-toplevel")
    rel = str(path.resolve().relative_to(Path(top).resolve())) if top else None
    return {"commit": commit, "study_dirty": bool(dirty), "path": rel}


def write_run_record(loaded: Any, plan: Any, store: Any, result: Any, results: Results, seconds: float,
                     git_info: dict[str, Any] | None | bool = True, note: str | None = None) -> tuple[dict[str, Any], Path]:
    """Write `record.json` into a staging folder `runs/.incoming-RUN_ID/`; `publish_run` moves the
    finished folder into place (only then does the run exist for `runs`, `report` and reuse).

    `plan` is a one-model study's Plan or a study's variants (neuronspec.plan.variants). With
    several models, stages are listed as MODEL:STAGE, and each model's identity, dims and
    stage order are kept under `variants`. `results` (without per-item detail) is what
    `report` and `diff` read once the store is gone.
    `git_info=True` asks git about the study file; a study read from a revision passes its own.
    """
    from neuronspec.plan.variants import as_variants

    variants = as_variants(loaded, plan)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{loaded.study.name}-{uuid.uuid4().hex[:6]}"
    folder = store.root / "runs" / f"{INCOMING}{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _write_record(loaded, variants, result, results, seconds, git_info, note, run_id, folder), folder
    except BaseException:  # a full disk, Ctrl-C: the caller never got the folder, so remove it here
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _write_record(loaded: Any, variants: Any, result: Any, results: Results, seconds: float,
                  git_info: dict[str, Any] | None | bool, note: str | None, run_id: str, folder: Path) -> dict[str, Any]:
    from neuronspec.plan.variants import all_stages, is_multi

    multi, first = is_multi(variants), variants[0].plan
    stages = all_stages(variants)
    computed = set(result.computed)
    record = {
        "run_id": run_id,
        "study": loaded.study.model_dump(mode="json"),
        "study_text": loaded.text,
        "study_file": str(loaded.path) if loaded.path else None,
        "overrides": list(loaded.source.overrides.values()),
        "note": note,
        "model": None if multi else first.model_identity,
        "dims": None if multi else first.dims,
        "code_versions": first.code_versions,
        "stage_order": list(stages),  # JSON files sort keys; this keeps the plan's (topological) order
        # reused_from: not computed, its key's result published from that stage's (inputs identical in content)
        "stages": {sid: {"key": s.key, "kind": s.kind, "computed": sid in computed, "reused_from": result.reused.get(sid),
                         "seconds": result.timings.get(sid),
                         "spec": s.spec_json(), "deps": list(s.deps), "origin": list(s.origin), "model_bound": s.model_bound,
                         "lang": s.lang, "arm": s.arm, "draw": s.draw, "evaluation": s.evaluation}
                   for sid, s in stages.items()},
        "seconds": seconds,
        "model_load_seconds": result.model_load_seconds,
        "versions": package_versions(),
        "report_code": report_code(),
        "git": git_state(loaded.path) if git_info is True else (git_info or None),
        "baseline_language": results.baseline_language,
        "created": time.time(),
        "results": to_json(results, detail=False),
    }
    if multi:
        record["models"] = {v.name: v.plan.model_identity for v in variants}
        record["variants"] = {v.name: {"study": v.plan.study_name, "model": v.plan.model_identity, "dims": v.plan.dims,
                                       "stage_order": list(v.plan.stages)} for v in variants}
    write_json(folder / "record.json", record)
    return record


def publish_run(runs: Path, record: dict[str, Any], staging: Path) -> Path:
    """Rename a complete staging folder to `runs/RUN_ID` and list it in the index: a run folder
    is whole (record, report, figures) or absent — an interrupted or failed write never leaves a
    folder that a later unchanged run would reuse."""
    final = runs / record["run_id"]
    os.replace(staging, final)
    _append_index(runs, record)
    return final


# -- listing ------------------------------------------------------------------------------
class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Study(_View):
    name: str | None = None


class _StageRow(_View):
    computed: bool = False


class _Git(_View):
    commit: str | None = None
    study_dirty: bool | None = None


class _Model(_View):
    id: str | None = None


class _RecordSummary(_View):
    """What `runs` lists of a record (records of every version read through it)."""

    run_id: str
    study: _Study = Field(default_factory=_Study)
    study_file: str | None = None
    created: float | None = None
    seconds: float | None = None
    stages: dict[str, _StageRow] = Field(default_factory=dict)
    git: _Git | None = None
    model: _Model | None = None
    models: dict[str, _Model] | None = None
    overrides: list[str] | None = None
    note: str | None = None


class IndexEntry(_View):
    """One line of runs/index.jsonl."""

    run_id: str
    study: str | None = None
    created: float | None = None


def index_entry(record: dict[str, Any]) -> dict[str, Any]:
    r = _RecordSummary.model_validate(record)
    computed = sum(1 for s in r.stages.values() if s.computed)
    models = list(r.models.values()) if r.models else [r.model] if r.model else []
    g = r.git or _Git()
    return {"run_id": r.run_id, "study": r.study.name, "study_file": r.study_file, "created": r.created, "seconds": r.seconds,
            "computed": computed, "cached": len(r.stages) - computed,
            "model": ", ".join(m.id or "?" for m in models) or None, "commit": g.commit, "dirty": g.study_dirty,
            "overrides": r.overrides or [], "note": r.note}


def _append_index(runs: Path, record: dict[str, Any]) -> None:
    line = json.dumps(index_entry(record), ensure_ascii=False, sort_keys=True) + "\n"
    with open(runs / INDEX, "a", encoding="utf-8") as f:  # one write of one line: appends do not interleave
        f.write(line)


def list_runs(store_root: Path, study: str | None = None) -> list[dict[str, Any]]:
    """Index entries of the runs in a store, newest first (records missing from the index included)."""
    runs = Path(store_root) / "runs"
    entries: dict[str, dict[str, Any]] = {}
    try:
        lines = (runs / INDEX).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:  # a torn last line after a crash
            continue
        # Only plain run ids name a folder: an index line is data, and must not point outside `runs/`.
        try:
            entry = IndexEntry.model_validate(e)
        except ValidationError:  # not an index line
            continue
        if is_run_id(entry.run_id) and _is_run_folder(runs / entry.run_id):
            entries[entry.run_id] = e
    if runs.is_dir():
        for folder in runs.iterdir():
            if folder.name not in entries and is_run_id(folder.name) and _is_run_folder(folder):
                try:
                    entries[folder.name] = index_entry(read_record(folder))
                except (OSError, ValueError, KeyError):
                    continue
    views = [(IndexEntry.model_validate(e), e) for e in entries.values()]
    out = [(v, e) for v, e in views if study is None or v.study == study]
    return [e for v, e in sorted(out, key=lambda ve: (ve[0].created or 0, ve[0].run_id), reverse=True)]


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,200}")


def is_run_id(value: object) -> bool:
    """A run id as `write_run_record` makes them: one plain folder name, no separators, no leading dot."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def _is_run_folder(folder: Path) -> bool:
    """A real folder (never a link) holding a record."""
    return not folder.is_symlink() and folder.is_dir() and (folder / "record.json").is_file()


class RecordError(ValueError):
    """A run record that cannot be read (truncated, not JSON, not a record): the CLI exits 2."""


def read_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "record.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot read the run record ({exc})") from None
    except ValueError as exc:
        raise RecordError(f"{path}: the run record is damaged (not JSON: {exc}); run the study again") from None
    if not isinstance(record, dict) or "run_id" not in record:
        raise RecordError(f"{path}: not a neuronspec run record")
    return record


def find_run(ref: str, stores: list[Path]) -> Path | None:
    """The folder of run `ref`: a run folder or record.json path, a run id, a unique prefix, or `latest`."""
    path = Path(ref)
    if path.name == "record.json" and path.is_file():
        return path.parent
    if (path / "record.json").is_file():
        return path
    for root in dict.fromkeys(Path(s).resolve() for s in stores):
        runs = root / "runs"
        if ref == "latest":
            listed = list_runs(root)
            if listed:
                return runs / listed[0]["run_id"]
            continue
        if (runs / ref / "record.json").is_file():
            return runs / ref
        if runs.is_dir() and "/" not in ref:
            hits = [f for f in runs.iterdir() if f.name.startswith(ref) and (f / "record.json").is_file()]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ValueError(f"run id prefix {ref!r} is ambiguous: " + ", ".join(sorted(h.name for h in hits)))
    return None


def load_results(folder: Path, record: dict[str, Any]) -> Results:
    """A finished run's results: its results.json, else what its record kept. A run written before
    records embedded typed results has a results.json of the old shape too: its record is read
    through the one adapter instead."""
    saved = Path(folder) / "results.json"
    data = json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else None
    if "results" not in record:  # a run from before the typed results: its files are in the old shape
        from neuronspec.report.legacy import legacy_results

        return legacy_results(record, data)
    return parse_results(data if data is not None else record["results"])


def results_from_record(record: dict[str, Any]) -> Results:
    """A run's results from its record alone, for runs whose store entries are gone."""
    if "results" in record:
        return parse_results(record["results"])
    from neuronspec.report.legacy import legacy_results

    return legacy_results(record)
