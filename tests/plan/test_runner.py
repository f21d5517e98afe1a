"""The cached DAG: reuse, targeted invalidation, explanations, resume, corruption, concurrency."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import explain, run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import load_study


def run(path: Path, *overrides: str, **kw):  # noqa: ANN201
    loaded = load_study(path, overrides)
    plan = compile_study(loaded)
    store = Store(path.parent / ".neuronspec")
    return plan, store, run_plan(plan, store, loaded.study, **kw)


def test_second_run_computes_nothing_and_never_loads_the_model(study_file: Path) -> None:
    plan, store, first = run(study_file)
    assert set(first.computed) == set(plan.stages)
    assert first.model_load_seconds is not None
    _, _, second = run(study_file)
    assert second.computed == []
    assert second.model_load_seconds is None
    assert all(s.state == "cached" for s in explain(plan, store))


def test_changing_epsilon_reruns_selection_and_downstream_but_no_forward_pass(study_file: Path) -> None:
    run(study_file)
    override = "detect.plnd.epsilon.quantile=0.8"
    loaded = load_study(study_file, [override])
    plan = compile_study(loaded)
    store = Store(study_file.parent / ".neuronspec")
    stale = {s.stage.id: s.reasons for s in explain(plan, store) if s.state == "stale"}
    assert "select/plnd" in stale
    assert any("epsilon.ffn.quantile: 0.9 → 0.8" in r for r in stale["select/plnd"])
    assert not any(sid.startswith(("stats/", "corpus/")) or "/base/" in sid for sid in stale)
    result = run_plan(plan, store, loaded.study)
    # each stale stage is computed, or reused where its inputs came out identical (tests/plan/test_early_cutoff.py)
    assert set(result.computed) | set(result.reused) == set(stale) and "select/plnd" in result.computed
    assert not any(sid.startswith("stats/") for sid in result.computed)


def _created(store: Store, key: str) -> float:
    return json.loads((store.entry_dir(key) / "meta.json").read_text())["created"]


def test_force_and_only_select_by_glob(study_file: Path) -> None:
    plan, store, first = run(study_file, only=["stats/plnd/en"])
    assert first.computed == ["corpus/detect", "stats/plnd/en"]
    run(study_file)
    before = {sid: _created(store, s.key) for sid, s in plan.stages.items()}
    inode = (store.entry_dir(plan.stages["select/plnd"].key) / "plnd.en.safetensors").stat().st_ino
    _, _, forced = run(study_file, force=["select/plnd"])
    assert "select/plnd" in forced.computed and "sets" in forced.computed
    assert "stats/plnd/en" not in forced.computed
    # the stored entries are the new results, not the old ones kept under the same key
    after = {sid: _created(store, s.key) for sid, s in plan.stages.items()}
    assert {sid for sid in plan.stages if after[sid] != before[sid]} == set(forced.computed)
    assert (store.entry_dir(plan.stages["select/plnd"].key) / "plnd.en.safetensors").stat().st_ino != inode
    assert all(store.status(s.key) == "cached" for s in plan.stages.values())


def test_corrupt_entry_is_detected_and_recomputed(study_file: Path) -> None:
    plan, store, _ = run(study_file)
    entry = store.entry_dir(plan.stages["stats/plnd/fr"].key) / "stats.safetensors"
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    reasons = {s.stage.id: s.reasons for s in explain(plan, store)}
    assert reasons["stats/plnd/fr"] == ["cached artifact failed its checksum"]
    _, _, again = run(study_file)
    assert again.computed == ["stats/plnd/fr"]  # same result → downstream keys unchanged, still cached
    assert store.status(plan.stages["stats/plnd/fr"].key) == "cached"


def test_interrupt_leaves_finished_stages_and_resumes(study_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.plan import kinds

    real = kinds.KINDS["eval"]

    def interrupted(ctx, stage, spec, out):  # noqa: ANN001, ANN202
        (out / "result.json").write_text("{partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(kinds.KINDS, "eval", dataclasses.replace(real, compute=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run(study_file)
    monkeypatch.setitem(kinds.KINDS, "eval", real)
    plan, store, resumed = run(study_file)
    assert not any(s.startswith(("stats/", "corpus/", "select/")) for s in resumed.computed)
    assert all(s.startswith("eval/") for s in resumed.computed)
    assert not list((store.root / "tmp").iterdir())


KILLER = """
import dataclasses, os, signal, sys
from neuronspec.plan import kinds
real = kinds.KINDS["eval"]
def killed(ctx, stage, spec, out):
    (out / "result.json").write_text("{partial")
    os.kill(os.getpid(), signal.SIGKILL)
kinds.KINDS["eval"] = dataclasses.replace(real, compute=killed)
from neuronspec.cli import main
sys.exit(main(["run", "-q", sys.argv[1]]))
"""


def test_sigkill_mid_stage_resumes_without_reading_partial_artifacts(study_file: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), str(study_file)], env=os.environ.copy(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    store = Store(study_file.parent / ".neuronspec")
    assert list((store.root / "tmp").iterdir()), "the killed stage's partial output should sit in tmp/"
    plan, store, resumed = run(study_file)
    assert not any(s.startswith(("stats/", "corpus/")) for s in resumed.computed)
    for stage in plan.stages.values():
        assert store.status(stage.key) == "cached"


def test_two_concurrent_runs_leave_a_consistent_store(study_file: Path) -> None:
    cmd = [sys.executable, "-m", "neuronspec.cli", "run", "-q", str(study_file)]
    procs = [subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    plan = compile_study(load_study(study_file))
    store = Store(study_file.parent / ".neuronspec")
    assert all(store.status(s.key) == "cached" for s in plan.stages.values())


def _tensor_files(store: Store) -> dict[Path, tuple[dict[str, str], dict[str, Any]]]:
    """Every safetensors file of the store: (metadata, tensors). Not bytes: safetensors writes its
    metadata map in a per-process hash order."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = {}
    for path in (store.root / "objects").rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        out[path.relative_to(store.root)] = (meta, load_file(str(path)))
    return out


def test_results_are_deterministic_for_a_seed(study_file: Path, tmp_path: Path) -> None:
    """Two complete computations (the second forced, so really recomputed into the store) give
    identical results and identical tensor files."""
    from neuronspec.report.results import collect

    plan, store, _ = run(study_file)
    first = collect(plan, store)
    files = _tensor_files(store)
    created = {sid: _created(store, s.key) for sid, s in plan.stages.items()}
    _, _, again = run(study_file, force=["corpus"])
    assert set(again.computed) == set(plan.stages)
    assert all(_created(store, s.key) != created[sid] for sid, s in plan.stages.items())
    assert collect(plan, store) == first
    again_files = _tensor_files(store)
    assert again_files.keys() == files.keys() and len(files) > 10
    for name, (meta, tensors) in files.items():
        assert again_files[name][0] == meta and again_files[name][1].keys() == tensors.keys(), name
        assert all(torch.equal(again_files[name][1][k], t) for k, t in tensors.items()), name


def test_unmeetable_corpus_request_fails_with_study_position(study_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuronspec.cli import main

    text = study_file.read_text().replace("docs_per_language: 3,", "docs_per_language: 500,")
    study_file.write_text(text)
    assert main(["run", "-q", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert f"{study_file}:6:3: corpora.ppl:" in err and "500 requested" in err


def test_batch_tokens_reaches_the_stages_only_when_set(study_file: Path) -> None:
    """Set, the statistics and evaluation stages receive the budget; corpora are unaffected."""
    plain = compile_study(load_study(study_file))
    assert plain.stages["stats/plnd/en"].spec.batch_tokens is None
    assert "batch_tokens" not in plain.stages["eval/ppl/base/en"].spec.options
    packed = compile_study(load_study(study_file, ["detect.plnd.batch_tokens=64", "evaluate.ppl.batch_tokens=48"]))
    assert packed.stages["stats/plnd/en"].spec.batch_tokens == 64
    assert packed.stages["eval/ppl/base/en"].spec.options["batch_tokens"] == 48
    assert packed.stages["corpus/detect"].key == plain.stages["corpus/detect"].key


def test_identical_stages_of_two_evaluations_are_computed_once(study_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second evaluation asking the same question (mwork's ppl and ppl-matrix on the diagonal)
    shares its keys, says so in `plan`, and costs no forward pass; a differing option does not share."""
    import neuronspec.evaluate as evaluate

    text = study_file.read_text().replace(
        "  ppl: {metric: perplexity, corpus: ppl, bootstrap: 50}",
        "  ppl: {metric: perplexity, corpus: ppl, bootstrap: 50, on: self}\n"
        "  again: {metric: perplexity, corpus: ppl, bootstrap: 50, on: all}\n"
        "  other: {metric: perplexity, corpus: ppl, bootstrap: 40}")
    study_file.write_text(text)
    calls: list[str] = []  # one per forward evaluation
    real = evaluate.run_evaluator
    monkeypatch.setattr(evaluate, "run_evaluator", lambda *a, **kw: (calls.append(a[0]), real(*a, **kw))[1])
    plan, store, result = run(study_file)
    evals = [s for s in plan.stages if s.startswith("eval/")]
    again = [s for s in evals if s.startswith("eval/again/")]
    same = {s: s.replace("eval/again/", "eval/ppl/") for s in again if s.replace("eval/again/", "eval/ppl/") in plan.stages}
    assert same and len(same) < len(again)  # base and diagonal stages exist in both; off-diagonal ones only here
    for sid, twin in same.items():
        assert plan.stages[sid].key == plan.stages[twin].key
        assert store.status(plan.stages[sid].key) == "cached"
    assert set(result.computed) == set(plan.stages)  # every stage is done, the twins without a computation
    assert len(calls) == len(evals) - len(same)  # "other" (bootstrap differs) computed its own
    assert len({plan.stages[s].key for s in evals}) == len(evals) - len(same)
    reasons = {st.stage.id: st.reasons for st in explain(plan, Store(study_file.parent / "fresh-store"))}
    sid, twin = next(iter(same.items()))
    assert reasons[sid] == ["never run", f"same computation as {twin}: computed once"]
    assert reasons[twin] == ["never run"]
