"""In a study, arms that start at a later partition replay the base model's early layers
(neuronspec.evaluate.prefix) and give the same results as computing every layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronspec.evaluate import prefix
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import load_study


def _evals(path: Path, store_dir: Path) -> dict[str, dict]:
    loaded = load_study(path, ["arms.0.deactivate.layers=late"])  # the arm starts at layer 2 of 3
    plan = compile_study(loaded)
    store = Store(store_dir)
    run_plan(plan, store, loaded.study)
    return {sid: json.loads(store.get(st.key).file("result.json").read_text())
            for sid, st in plan.stages.items() if st.kind == "eval"}


def test_later_arms_replay_the_base_prefix_with_identical_results(study_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = prefix.PrefixStore()
    monkeypatch.setattr(prefix, "STORE", store)
    shared = _evals(study_file, tmp_path / "shared")
    assert store.hits > 0 and store.layers_skipped > 0

    whole = prefix.PrefixStore(max_bytes=0)  # records nothing: every arm computes every layer
    monkeypatch.setattr(prefix, "STORE", whole)
    computed = _evals(study_file, tmp_path / "whole")
    assert whole.hits == 0
    arms = [sid for sid in shared if "/base/" not in sid]
    assert arms
    for sid in shared:
        assert shared[sid]["doc_nll"] == computed[sid]["doc_nll"], sid  # exactly, not approximately
