"""Where neuronspec keeps things on disk.

Two places: the *user cache* (embedded models converted once, materialised corpora)
shared by every study, and the *study store* (`.neuronspec/` beside a study) that holds
stage artifacts and run records for that study.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "NEURONSPEC_HOME"
ENV_STORE = "NEURONSPEC_STORE"


def user_cache() -> Path:
    """Root of the per-user cache (`$NEURONSPEC_HOME`, else `~/.cache/neuronspec`)."""
    root = os.environ.get(ENV_HOME)
    path = Path(root) if root else Path.home() / ".cache" / "neuronspec"
    path.mkdir(parents=True, exist_ok=True)
    return path


def study_store(study_file: Path | None, override: str | Path | None = None) -> Path:
    """Artifact store of a study: flag, then `$NEURONSPEC_STORE`, then `.neuronspec/` beside it."""
    if override:
        return Path(override)
    env = os.environ.get(ENV_STORE)
    if env:
        return Path(env)
    base = study_file.parent if study_file is not None else Path.cwd()
    return base / ".neuronspec"
