"""`run --sweep`: one ordinary run per value, sharing cached stages, and a sensitivity table whose
numbers are each run's own sets and effects."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import neuronspec as ns
from neuronspec.cli import main
from neuronspec.sweep import parse_sweep
from neuronspec.spec import StudyError
from tiny_studies import STUDY, make_corpus

KEY = "detect.plnd.epsilon.quantile"


@pytest.fixture()
def study(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "c.jsonl")))
    return path


def test_sweep_runs_each_value_and_tabulates_its_own_sets_and_effects(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(study), "--sweep", f"{KEY}=0.8,0.9", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    folder = Path(out["sweep"])
    assert {p.name for p in folder.iterdir()} >= {"sweep.json", "sensitivity.csv", "sensitivity.md", "sensitivity.png",
                                                  "sensitivity.pdf", "sensitivity.svg"}
    runs = json.loads((folder / "sweep.json").read_text())["runs"]
    assert len(runs) == 2
    rows = list(csv.DictReader((folder / "sensitivity.csv").open()))
    for value, run_id in zip(("0.8", "0.9"), runs):
        record = json.loads((study.parent / ".neuronspec" / "runs" / run_id / "record.json").read_text())
        assert record["overrides"] == [f"{KEY}={value}"] and record["note"].endswith(f"{KEY}={value}")
        # each value's numbers are that value's run: sets counted from the stored NeuronSets
        results = ns.open_study(study, {KEY: float(value)}).results()
        assert results.folder.name == run_id
        for lang in ("en", "fr", "de"):
            size = next(float(r["number"]) for r in rows if (r["value"], r["quantity"], r["name"], r["language"])
                        == (value, "set size", "plnd", lang))
            assert size == results.neuron_set("plnd", lang).count()
        if value == "0.9":  # the second value reuses what ε does not change: corpora and PLND statistics
            computed = [sid for sid, s in record["stages"].items() if s["computed"]]
            assert computed and not any(sid.startswith(("corpus", "stats")) for sid in computed), computed
    # a lower quantile is a lower ε: PLND's sets can only grow
    size = {(r["value"], r["language"]): float(r["number"]) for r in rows if r["quantity"] == "set size" and r["name"] == "plnd"}
    assert all(size[("0.8", lang)] >= size[("0.9", lang)] for lang in ("en", "fr", "de"))
    changes = [r for r in rows if r["quantity"] == "change"]
    assert {r["name"] for r in changes} == {"ppl/early"} and {r["language"] for r in changes} == {"en", "fr", "de"}
    assert all(r["random_mean"] != "" for r in changes)  # the arm's random control, `early-random`


def test_a_bad_sweep_is_refused_before_anything_runs(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StudyError, match="two or more"):
        parse_sweep(f"{KEY}=0.8")
    assert parse_sweep("detect.plnd.sites=[ffn],[ffn, attn.v]").values == ("[ffn]", "[ffn, attn.v]")
    assert main(["run", str(study), "--sweep", f"{KEY}=0.8,1.5"]) == 2
    assert "less than 1" in capsys.readouterr().err
    assert not (study.parent / ".neuronspec" / "runs").exists()
