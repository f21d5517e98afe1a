"""diff / runs / report over a real history: a committed study, run; ε and the arms edited, run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_helpers import STUDY, History, git

from neuronspec import cli
from neuronspec.cli import main
from neuronspec.plan.compile import compile_study
from neuronspec.plan.store import Store
from neuronspec.report.records import read_record
from neuronspec.report.tables import fmt
from neuronspec.spec import load_study


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that rich neither wraps cells nor switches to the vertical layout."""
    monkeypatch.setattr(cli.console, "width", 400)
    monkeypatch.setattr(cli.err, "width", 400)


def diff_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["diff", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


EPS, SEED, LATE = "detect.plnd.epsilon.quantile", "arms[early-random].deactivate.seed", "arms[late]"


def test_diff_rev_shows_spec_changes_the_stages_they_invalidate_and_metric_deltas(
        history: History, capsys: pytest.CaptureFixture[str], wide: None) -> None:
    assert main(["diff", "--rev", "HEAD", str(history.study)]) == 0
    out = capsys.readouterr().out
    eps_line = next(line for line in out.splitlines() if EPS in line)
    assert "0.9" in eps_line and "0.8" in eps_line and "select/plnd" in eps_line and "eval/ppl/early/* (9)" in eps_line
    seed_line = next(line for line in out.splitlines() if SEED in line)
    assert "mask/early-random" in seed_line and "eval/ppl/early/" not in seed_line
    late_line = next(line for line in out.splitlines() if f"{LATE} (added)" in line)
    assert "new: mask/late, eval/ppl/late/* (9)" in late_line
    assert "arms[0]" not in out and "arms[1]" not in out  # arms are matched by name, not position
    assert "ppl: perplexity (95% CI)" in out and "early/en@en" in out
    assert "neuron sets: A vs B" in out

    d = diff_json(capsys, "--rev", "HEAD", str(history.study))
    assert d["a"]["label"] == f"HEAD:{history.study}" and d["a"]["git"]["commit"] == history.commit
    spec = {c["field"]: c for c in d["spec"]}
    assert set(spec) == {EPS, SEED, LATE}
    assert (spec[EPS]["a"], spec[EPS]["b"], spec[SEED]["a"], spec[SEED]["b"]) == (0.9, 0.8, None, 7)
    assert spec[LATE]["op"] == "added" and spec[LATE]["b"]["deactivate"]["layers"] == "late"
    eps = spec[EPS]["stages"]["changed"]
    assert {"select/plnd", "sets", "mask/early", "mask/early-random/draw1", "mask/early-random/draw2"} <= set(eps)
    assert not any(s.startswith(("stats/", "corpus/", "eval/ppl/base/")) for s in eps)  # ε re-runs no forward pass
    assert {s for s in spec[SEED]["stages"]["changed"] if s.startswith("mask/")} == {"mask/early-random/draw1", "mask/early-random/draw2"}
    assert spec[LATE]["stages"]["added"][0] == "mask/late" and len(spec[LATE]["stages"]["added"]) == 10
    assert d["stages"]["removed"] == [] and d["missing"] == {"a": [], "b": []} and not d["identical"]

    # The metric numbers are the stored results of the two runs.
    first = read_record(history.store / "runs" / history.first)
    plan = compile_study(load_study(history.study))
    store = Store(history.store)
    rows = {r["stage"]: r for r in d["metrics"]}
    assert "eval/ppl/base/en" not in rows  # unchanged key → identical result, not listed
    assert {s for s in rows if "/late/" not in s} == {s for s in plan.stages if s.startswith(("eval/ppl/early/", "eval/ppl/early-random/"))}
    for sid, r in rows.items():
        assert r["b"]["value"] == store.get(plan.stages[sid].key).json()["value"]
        if "/late/" in sid:
            assert r["a"] is None and r["delta"] is None
            continue
        assert r["a"]["value"] == store.get(first["stages"][sid]["key"]).json()["value"]
        assert r["delta"] == pytest.approx(r["b"]["value"] - r["a"]["value"])
        (alo, ahi), (blo, bhi) = r["a"]["ci"], r["b"]["ci"]
        assert r["outside_noise"] == (ahi < blo or bhi < alo)

    # Neuron sets: a lower ε only adds PLND-relevant neurons.
    plnd = [r for r in d["sets"] if r["set"] == "plnd"]
    assert {r["lang"] for r in plnd} == {"en", "fr", "de"}
    for r in plnd:
        assert r["a"] == sum(sum(layers.values()) for layers in first["results"]["sets"]["plnd"]["counts"][r["lang"]].values())
        assert r["b"] > r["a"] and r["only_a"] == 0 and r["only_b"] == r["b"] - r["a"] and 0 < r["jaccard"] < 1
    assert {r["arm"] for r in d["derived"]} == {"late", "early", "early-random"}

    # --md shows the same numbers as --json.
    assert main(["diff", "--rev", "HEAD", str(history.study), "--md"]) == 0
    md = capsys.readouterr().out
    for sid, r in rows.items():
        line = next(line for line in md.splitlines() if line.startswith(f"| {sid.split('/', 2)[2]} |"))
        assert fmt(r["b"]["value"]) in line and fmt(r["b"]["ci"][0]) in line
        if r["a"] is not None:
            assert fmt(r["a"]["value"]) in line and fmt(r["delta"], 2, True) in line
            assert line.rstrip(" |").endswith("*") == r["outside_noise"]


def test_diff_of_two_run_ids_matches_the_rev_diff(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    by_rev = diff_json(capsys, "--rev", "HEAD", str(history.study))
    by_run = diff_json(capsys, history.first, history.second, "--store", str(history.store))
    assert by_run["a"]["run_id"] == history.first and by_run["b"]["run_id"] == history.second
    assert [(c["field"], c["stages"]) for c in by_run["spec"]] == [(c["field"], c["stages"]) for c in by_rev["spec"]]
    assert by_run["metrics"] == by_rev["metrics"]
    assert by_run["sets"] == by_rev["sets"]


def test_changes_that_cannot_stand_alone_are_attributed_by_stage_origin(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    """Renaming a set and the arms that use it: no single change validates on its own."""
    renamed = history.study.with_name("renamed.yaml")
    renamed.write_text(history.study.read_text().replace("specific", "excl"))
    spec = {c["field"]: c["stages"] for c in diff_json(capsys, str(history.study), str(renamed))["spec"]}
    assert set(spec) == {"neurons.specific", "neurons.excl", "arms[late].deactivate.neurons", "arms[early].deactivate.neurons"}
    early = spec["arms[early].deactivate.neurons"]["changed"]
    assert "mask/early" in early and "mask/early-random/draw1" in early and "eval/ppl/early/en@en" in early
    assert "mask/late" not in early and "sets" not in early
    assert "sets" in spec["neurons.excl"]["changed"]


def test_stages_only_the_changes_together_make_have_their_own_row(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    """A new language and a new arm: eval/ppl/late/de@de comes from neither change alone."""
    before = history.study.with_name("two-languages.yaml")
    text = history.study.read_text().replace("[en, fr, de]", "[en, fr]")
    before.write_text(text.replace("  - {name: late, deactivate: {neurons: specific, layers: late}}\n", ""))
    spec = {c["field"]: c["stages"] for c in diff_json(capsys, str(before), str(history.study))["spec"]}
    assert set(spec) == {"languages", LATE, "(the changes above, together)"}
    together = spec["(the changes above, together)"]["added"]
    assert together and all(s.startswith("eval/ppl/late/") and "de" in s for s in together)
    assert "eval/ppl/late/en@en" in spec[LATE]["added"] and "stats/plnd/de" in spec["languages"]["added"]


def test_identical_studies_have_no_differences(history: History, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    copy = history.study.with_name("copy.yaml")
    copy.write_text(history.study.read_text())
    assert main(["diff", str(history.study), str(copy)]) == 0
    assert "no differences" in capsys.readouterr().out
    d = diff_json(capsys, str(history.study), str(copy))
    assert d["identical"] and d["spec"] == [] and d["metrics"] == []
    assert diff_json(capsys, history.second, str(history.study), "--store", str(history.store))["identical"]


def test_invalid_side_reports_its_line_and_exits_2(history: History, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = history.study.with_name("bad.yaml")
    bad.write_text(history.study.read_text().replace("quantile: 0.8", "quantile: 1.5"))
    assert main(["diff", str(history.study), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:9:" in err and "detect.plnd.epsilon" in err

    # A study at a revision: the error names REV:path:LINE:COL.
    repo = tmp_path / "other"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "bad.yaml").write_text(STUDY.format(model="m", corpus="c.jsonl").replace("[en, fr, de]", "[en, fr, xx]"))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "bad")
    monkeypatch.chdir(repo)
    assert main(["diff", "HEAD:bad.yaml", str(history.study)]) == 2
    assert "HEAD:bad.yaml:4:" in capsys.readouterr().err
    assert main(["diff", "HEAD:missing.yaml", str(history.study)]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_runs_lists_both_runs_newest_first(history: History, capsys: pytest.CaptureFixture[str], wide: None) -> None:
    capsys.readouterr()
    assert main(["runs", str(history.study), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    ids = [r["run_id"] for r in runs]
    assert ids.index(history.second) < ids.index(history.first)
    first, second = runs[ids.index(history.first)], runs[ids.index(history.second)]
    stages = len(read_record(history.store / "runs" / history.first)["stages"])
    assert (first["computed"], first["cached"]) == (stages, 0)
    assert second["cached"] > 0 and second["computed"] > 0
    assert first["commit"] == second["commit"] == history.commit
    assert first["dirty"] is False and second["dirty"] is True
    assert main(["runs", str(history.study)]) == 0
    out = capsys.readouterr().out
    assert history.first in out and history.second in out and f"{history.commit[:10]}*" in out


def test_record_keeps_metrics_with_intervals_model_versions_and_git(history: History) -> None:
    record = read_record(history.store / "runs" / history.second)
    m, = [c for c in record["results"]["evaluations"]["ppl"]["cells"] if (c["arm"], c["mask_lang"], c["lang"]) == ("early", "fr", "en")]
    assert m["metric"] == "perplexity" and m["value"] > 1 and m["ci"][0] <= m["value"] <= m["ci"][1]
    assert m["value"] == Store(history.store).get(record["stages"]["eval/ppl/early/fr@en"]["key"]).json()["value"]
    assert record["model"]["digest"] and record["versions"]["torch"] and record["code_versions"]
    assert record["git"] == {"commit": history.commit, "study_dirty": True, "path": "studies/tiny.yaml"}
    assert record["stage_order"][0].startswith("corpus/") and record["study_text"] == history.study.read_text()
    assert record["stages"]["select/plnd"]["origin"] == ["detect", "plnd", "epsilon"]


def test_report_writes_self_contained_html_with_the_tables(history: History, capsys: pytest.CaptureFixture[str], wide: None) -> None:
    from neuronspec.report.model import parse_results
    from neuronspec.report.records import results_from_record
    from neuronspec.report.render import result_tables

    folder = history.store / "runs" / history.first
    (folder / "report.html").unlink(missing_ok=True)
    assert main(["report", history.first[:-2], "--study", str(history.study)]) == 0  # a unique prefix will do
    out = capsys.readouterr().out
    html = (folder / "report.html").read_text()
    tables = result_tables(parse_results(json.loads((folder / "results.json").read_text())))
    for t in tables:
        assert t.title.replace("&", "&amp;") in html.replace("&#x27;", "'")
    assert "ppl: perplexity per language" in out and "arms: neurons deactivated" in out  # re-rendered on the terminal
    base_en = json.loads((folder / "results.json").read_text())["evaluations"]["ppl"]["base"]["en"]
    assert f"<td>{fmt(base_en)}</td>" in html
    assert html.count("data:image/png;base64,") == len(list(folder.glob("*.png"))) > 0
    assert "<script" not in html and 'src="http' not in html  # self-contained
    # Without results.json (or the store), the record alone gives the same tables.
    record = read_record(folder)
    assert [t.to_markdown() for t in result_tables(results_from_record(record))] == [t.to_markdown() for t in tables]


def test_diff_against_an_unrun_study_names_the_missing_stages_and_runs_it(
        history: History, capsys: pytest.CaptureFixture[str]) -> None:
    other = history.study.with_name("lower.yaml")
    other.write_text(history.study.read_text().replace("quantile: 0.8", "quantile: 0.7"))
    d = diff_json(capsys, str(history.study), str(other))
    assert [c["field"] for c in d["spec"]] == [EPS]
    assert "select/plnd" in d["missing"]["b"] and not any(s.startswith("stats/") for s in d["missing"]["b"])
    assert d["metrics"] == []  # nothing to compare yet
    assert main(["diff", str(history.study), str(other)]) == 0
    assert "--run" in capsys.readouterr().out
    d = diff_json(capsys, str(history.study), str(other), "--run", "-q")
    assert d["missing"]["b"] == [] and d["metrics"]
