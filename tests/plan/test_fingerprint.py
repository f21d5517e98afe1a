"""Cache keys follow the code: editing what computes a stage makes it stale, with the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from neuronspec.plan.compile import compile_study
from neuronspec.plan.fingerprint import CodeRef, fingerprints
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import load_study

PACKAGE = Path(__file__).resolve().parents[2] / "neuronspec"


def _copy_package(dest: Path) -> Path:
    shutil.copytree(PACKAGE, dest / "neuronspec", ignore=shutil.ignore_patterns("__pycache__"))
    return dest / "neuronspec"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_only_code_changes_count_not_comments_whitespace_or_docstrings(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path)
    ref = {"stats.plnd": CodeRef("neuronspec.plan.kinds.plnd", ("stats_plnd", "PlndStats"))}
    before = fingerprints(ref, tmp_path)["stats.plnd"]
    assert "neuronspec/methods/plnd.py" in before.parts and "neuronspec/plan/kinds/plnd.py:stats_plnd" in before.parts
    plnd = pkg / "methods" / "plnd.py"
    text = plnd.read_text(encoding="utf-8")
    # a comment, blank lines, a re-wrapped docstring: the same code
    plnd.write_text(text.replace('"""', '"""  Reworded. \n\n', 1).replace("\nimport ", "\n# a comment\n\nimport ", 1),
                    encoding="utf-8")
    assert fingerprints(ref, tmp_path)["stats.plnd"] == before
    # a real change (a constant in the importance computation's module)
    plnd.write_text(text + "\nEXTRA_SCALE = 2.0\n", encoding="utf-8")
    after = fingerprints(ref, tmp_path)["stats.plnd"]
    assert after.digest != before.digest and after.changed(before.parts) == ["neuronspec/methods/plnd.py"]


def test_editing_a_method_in_a_copy_of_the_package_makes_plan_say_why(study_file: Path, tmp_path: Path) -> None:
    loaded = load_study(study_file)
    plan = compile_study(loaded)
    run_plan(plan, Store(study_file.parent / ".neuronspec"), loaded.study)

    pkg = _copy_package(tmp_path / "copy")
    _edit(pkg / "methods" / "plnd.py", "def resolve_thresholds(", "def _unused() -> int:\n    return 1\n\n\ndef resolve_thresholds(")
    _edit(pkg / "models" / "forward.py", "\nimport ", "\n# only a comment\nimport ")  # used by every model stage
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "copy")}
    cmd = [sys.executable, "-m", "neuronspec.cli", "plan", "--json", str(study_file)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["stage"]: r for r in json.loads(done.stdout)}
    stale = {sid for sid, r in rows.items() if r["state"] == "stale"}
    expected = {sid for sid in plan.stages
                if sid.startswith(("stats/plnd/", "select/plnd", "sets", "mask/", "eval/ppl/early"))}
    assert stale == expected
    for lang in ("en", "fr", "de"):
        assert rows[f"stats/plnd/{lang}"]["reasons"] == ["code of stats.plnd changed (neuronspec/methods/plnd.py)"]
    assert "code of select.plnd changed (neuronspec/methods/plnd.py)" in rows["select/plnd"]["reasons"]
    assert rows["sets"]["reasons"] == ["input select/plnd changed"]
    assert all(rows[sid]["state"] == "cached" for sid in rows if sid.startswith(("corpus/", "eval/ppl/base/")))


def test_plan_kinds_is_fingerprinted_function_by_function(tmp_path: Path) -> None:
    """Editing one kind's compute function changes that kind only; a shared helper (in the kinds'
    own base module) changes its users only, not every kind that imports something from it."""
    from neuronspec.plan.kinds import KINDS

    pkg = _copy_package(tmp_path)
    refs = {k: KINDS[k].code for k in ("stats.plnd", "stats.act", "eval", "corpus")}
    before = fingerprints(refs, tmp_path)
    kinds = pkg / "plan" / "kinds" / "plnd.py"
    _edit(kinds, "        raise ValueError(f\"{stage.id}: no document of {s.lang!r} has two or more tokens\")",
          "        raise ValueError(f\"{stage.id}: no document of {s.lang!r} has 2+ tokens\")")
    after = fingerprints(refs, tmp_path)
    assert after["stats.plnd"].changed(before["stats.plnd"].parts) == ["neuronspec/plan/kinds/plnd.py:stats_plnd"]
    assert all(after[k] == before[k] for k in ("stats.act", "eval", "corpus"))
    _edit(pkg / "plan" / "kinds" / "base.py", "def read_docs(entry: Any, lang: str) -> list[dict[str, Any]]:\n",
          "def read_docs(entry: Any, lang: str) -> list[dict[str, Any]]:\n    assert lang\n")
    again = fingerprints(refs, tmp_path)
    assert {k for k in refs if again[k] != after[k]} == {"stats.plnd", "stats.act", "eval"}  # corpus does not read docs
    assert again["eval"].changed(after["eval"].parts) == ["neuronspec/plan/kinds/base.py:read_docs"]


def test_planning_and_rerunning_a_cached_study_never_import_torch(study_file: Path) -> None:
    """Fingerprints are read from source: neither `plan` nor a fully cached `run` imports torch."""
    loaded = load_study(study_file)
    run_plan(compile_study(loaded), Store(study_file.parent / ".neuronspec"), loaded.study)
    for command in (["plan", str(study_file)], ["run", "-q", str(study_file)]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "neuronspec.cli", *command],
                              capture_output=True, text=True, timeout=120, env=os.environ.copy())
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert "neuronspec.plan.fingerprint" in imported and "torch" not in imported, command
