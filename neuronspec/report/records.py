"""Run records: what ran, with what, and what came out — one folder per run.

`runs/RUN_ID/record.json` holds the resolved study, every stage key and its status,
timings, package versions, the model identity, and the git commit / dirty state of the
study file, so a result can always be traced to exactly what produced it.
"""

from __future__ import annotations

import platform
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from neuronspec.plan.store import write_json

_PACKAGES = ("neuronspec", "torch", "transformers", "pydantic", "safetensors", "datasets")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Path | None) -> dict[str, Any] | None:
    """Commit of the repository holding the study, and whether the study file differs from it."""
    if path is None:
        return None
    cwd = path.resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--", path.resolve().name)
    return {"commit": commit, "study_dirty": bool(dirty)}


def write_run_record(loaded: Any, plan: Any, store: Any, result: Any, results: dict[str, Any], seconds: float) -> tuple[dict[str, Any], Path]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{plan.study_name}-{uuid.uuid4().hex[:6]}"
    folder = store.root / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "study": loaded.study.model_dump(mode="json"),
        "study_file": str(loaded.path) if loaded.path else None,
        "overrides": list(loaded.source.overrides.values()),
        "model": plan.model_identity,
        "stages": {sid: {"key": s.key, "kind": s.kind, "computed": sid in result.computed,
                         "seconds": result.timings.get(sid)} for sid, s in plan.stages.items()},
        "seconds": seconds,
        "model_load_seconds": result.model_load_seconds,
        "versions": package_versions(),
        "git": git_state(loaded.path),
        "metrics": {name: {k: ev[k] for k in ("metric", "base", "arms")} for name, ev in results["evaluations"].items()},
        "created": time.time(),
    }
    write_json(folder / "record.json", record)
    return record, folder
