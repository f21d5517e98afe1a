"""Pieces of diff / init / tables that need no model: semantic spec diff, starter study, layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronspec.cli import main
from neuronspec.report.diff import Named, apply_change, compress, spec_changes
from neuronspec.report.tables import Table
from neuronspec.spec import load_study
from neuronspec.spec.schema import schema_text
from neuronspec.spec.starter import starter_study

A = {
    "name": "s", "languages": ["en", "fr"], "corpora": {"ppl": {"source": "x", "max_tokens": 32}},
    "detect": {"plnd": None},
    "arms": [{"name": "one", "deactivate": {"neurons": "n", "seed": None}},
             {"name": "two", "deactivate": {"random_like": "one", "seed": None}}],
}


def b_side() -> dict:
    import copy

    b = copy.deepcopy(A)
    b["languages"] = ["en", "fr", "de"]
    b["corpora"]["ppl"]["max_tokens"] = 64
    b["corpora"]["det"] = {"source": "y"}
    b["detect"]["plnd"] = {"epsilon": 0.1}
    b["arms"] = [{"name": "zero", "deactivate": {"neurons": "n", "seed": None}}, A["arms"][1], A["arms"][0]]
    b["arms"][1] = {"name": "two", "deactivate": {"random_like": "one", "seed": 3}}
    del b["arms"][2]  # arm "one" removed; "zero" inserted at the front
    return b


def test_spec_changes_match_arms_by_name_and_report_fields() -> None:
    changes = {c.dotted: c for c in spec_changes(A, b_side())}
    assert set(changes) == {"languages", "corpora.ppl.max_tokens", "corpora.det", "detect.plnd",
                            "arms[one]", "arms[two].deactivate.seed", "arms[zero]"}
    assert (changes["languages"].old, changes["languages"].new) == (["en", "fr"], ["en", "fr", "de"])
    assert changes["corpora.det"].op == "added" and changes["detect.plnd"].op == "added"
    assert changes["arms[one]"].op == "removed" and changes["arms[zero]"].op == "added"
    assert changes["arms[two].deactivate.seed"].path[1] == Named("two")
    assert spec_changes(A, A) == []


def test_applying_every_change_turns_a_into_b_and_back() -> None:
    b = b_side()
    changes = spec_changes(A, b)
    forward = A
    for c in changes:
        forward = apply_change(forward, c)
    assert spec_changes(forward, b) == [] or {c.op for c in spec_changes(forward, b)} == {"reordered"}
    back = b
    for c in changes:
        back = apply_change(back, c, reverse=True)
    assert spec_changes(back, A) == [] or {c.op for c in spec_changes(back, A)} == {"reordered"}


def test_reordering_arms_is_one_change() -> None:
    b = dict(A, arms=list(reversed(A["arms"])))
    (change,) = spec_changes(A, b)
    assert change.op == "reordered" and change.dotted == "arms" and change.new == ["two", "one"]
    assert apply_change(A, change)["arms"] == b["arms"]


def test_compress_names_whole_sibling_groups_only() -> None:
    universe = ["sets", "mask/a", "eval/p/a/en", "eval/p/a/fr", "eval/p/a/de", "eval/p/b/en"]
    assert compress(["sets", "eval/p/a/en", "eval/p/a/fr", "eval/p/a/de"], universe) == "sets, eval/p/a/* (3)"
    assert compress(["eval/p/a/en", "eval/p/a/fr"], universe) == "eval/p/a/en, eval/p/a/fr"
    universe.append("eval/p/a/it")
    assert compress(["eval/p/a/en", "eval/p/a/fr", "eval/p/a/de"], universe) == "eval/p/a/{en,fr,de}"


def test_wide_tables_split_into_parts_that_fit_and_keep_every_cell() -> None:
    t = Table("t", ["arm"] + [f"col{i}" for i in range(12)], caption="c")
    t.add("x[1]", *[f"{i}.000000" for i in range(12)])
    t.add("y", *["" for _ in range(12)])
    t.bold.add((0, 5))
    parts = t.split(60)
    assert len(parts) > 1 and all(p.min_width() <= 60 for p in parts)
    assert [p.caption for p in parts] == [""] * (len(parts) - 1) + ["c"]  # the caption once, under the last part
    seen = [c for p in parts for c in p.columns[1:]]
    assert seen == t.columns[1:]  # every column once, in order, each part labelled by the first column
    for p in parts:
        assert p.columns[0] == "arm" and [r[0] for r in p.rows] == ["x[1]", "y"]
        for r, c in p.bold:
            assert p.columns[c] == "col4" and r == 0
    assert t.split(500) == [t]
    from rich.console import Console

    console = Console(width=60, record=True)
    console.print(t.to_rich())
    assert "x[1]" in console.export_text()  # cells are not read as rich markup


def _schema_of(study: Path) -> dict:
    """The JSON the study's `yaml-language-server` line leads an editor to (a file URI or a path relative to it)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    first = study.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), first
    target = first.split("$schema=", 1)[1]
    path = Path(url2pathname(urlparse(target).path)) if target.startswith("file:") else study.parent / target
    return json.loads(path.read_text())


def test_init_points_at_a_schema_that_exists_wherever_the_study_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for out in (tmp_path / "a.yaml", tmp_path / "deep" / "er" / "b.yaml", tmp_path / "with space" / "c.yaml"):
        assert main(["init", "x", "--out", str(out)]) == 0
        assert _schema_of(out) == json.loads(schema_text())
    (tmp_path / "repo" / "schemas").mkdir(parents=True)  # a checkout's layout: the relative line, portable with it
    (tmp_path / "repo" / "schemas" / "study.schema.json").write_text(schema_text())
    assert main(["init", "y", "--out", str(tmp_path / "repo" / "studies" / "y.yaml")]) == 0
    assert (tmp_path / "repo" / "studies" / "y.yaml").read_text().startswith(
        "# yaml-language-server: $schema=../schemas/study.schema.json\n")


def test_init_writes_a_commented_starter_that_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "mine"]) == 0
    path = tmp_path / "studies" / "mine.yaml"
    text = path.read_text()
    assert _schema_of(path) == json.loads(schema_text())  # outside a checkout: the installed schema
    loaded = load_study(path)
    assert loaded.study.name == "mine" and loaded.study.arms and loaded.study.detect.plnd is not None
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) > 10  # commented
    assert main(["init", "mine"]) == 2  # never overwrites silently
    assert main(["init", "mine", "--force", "--out", str(tmp_path / "elsewhere" / "x.yaml")]) == 0
    assert load_study(tmp_path / "elsewhere" / "x.yaml").study.name == "mine"
    assert main(["init", "bad name"]) == 2
    with pytest.raises(ValueError):
        starter_study("-x")


def test_starter_partitions_fit_the_embedded_model() -> None:
    """The starter's partitions end at Gemma 3 270M's 18 layers (checked at plan time, so check here)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(starter_study("s"))
        study = load_study(path).study
    assert max(end for _, end in study.partitions.values()) == 18


def _cells(arm: str, kind: str, table: dict[str, dict[str, float]], base: dict[str, float]) -> list:
    from neuronspec.report.model import Cell

    cells = [{"arm": None, "arm_kind": None, "mask_lang": None, "lang": lang, "value": v} for lang, v in base.items()]
    cells += [{"arm": arm, "arm_kind": kind, "mask_lang": ml, "lang": lang, "value": v}
              for ml, row in table.items() for lang, v in row.items()]
    return [Cell.model_validate(c) for c in cells]


def test_matrix_diagonal_counts_damage_for_deactivation_and_improvement_for_enhancement() -> None:
    from neuronspec.report.results import evaluation

    base = {"en": 10.0, "zh": 20.0, "hi": 40.0}
    # rows: the language whose set is deactivated / enhanced; perplexities per evaluated language
    table = {"en": {"en": 9.0, "zh": 20.0, "hi": 40.0},    # en's own change is the most negative
             "zh": {"en": 10.0, "zh": 30.0, "hi": 40.0},   # zh's own change is the most positive
             "hi": {"en": 11.0, "zh": 20.0, "hi": 44.0}}   # +10 % own vs +10 % en: a tie, not a win
    off = evaluation("perplexity", _cells("off", "deactivate", table, base), "en").matrices["off"]
    assert off.effect == "damage" and (off.diagonal_largest, off.diagonal_ties) == (1, 1)  # zh wins, hi ties
    assert off.change["zh"]["zh"] == pytest.approx(50.0)
    up = evaluation("perplexity", _cells("up", "enhance", table, base), "en").matrices["up"]
    assert up.effect == "improvement" and up.diagonal_largest == 1  # en only
    acc = evaluation("accuracy", _cells("off", "deactivate", table, base), "en").matrices["off"]
    assert acc.diagonal_largest == 1  # for accuracy, damage is the lowest change: en


def test_paired_change_ci_brackets_the_change_and_needs_the_same_documents() -> None:
    import math

    from neuronspec.report.model import Cell
    from neuronspec.report.results import paired_change_ci

    def cell(doc_nll: list[float], doc_tokens: list[int]) -> Cell:
        return Cell(arm=None, lang="en", doc_nll=doc_nll, doc_tokens=doc_tokens)

    base = cell([10.0, 20.0, 30.0, 12.0], [5, 10, 15, 6])
    shifted = cell([x + 0.1 * t for x, t in zip(base.doc_nll, base.doc_tokens)], base.doc_tokens)
    lo, hi = paired_change_ci("perplexity", base, shifted)
    # every document's NLL rises by 0.1 per token: the change is exactly e^0.1 − 1 in every resample
    assert lo == pytest.approx(100 * math.expm1(0.1)) and hi == pytest.approx(100 * math.expm1(0.1))
    noisy = cell([11.0, 19.0, 33.0, 12.0], base.doc_tokens)
    lo, hi = paired_change_ci("perplexity", base, noisy)
    change = 100 * math.expm1((sum(noisy.doc_nll) - sum(base.doc_nll)) / sum(base.doc_tokens))
    assert lo < change < hi
    assert paired_change_ci("perplexity", base, cell(noisy.doc_nll, [5, 10, 15, 7])) is None
    assert paired_change_ci("choice", base, noisy) is None


def test_latex_export_is_booktabs_and_escapes_what_latex_reads_as_commands() -> None:
    from neuronspec.report.tables import Num

    t = Table("ppl: 5% of {set}_x & Δen", ["arm", "en"], caption="#draws ~ 2^3 … done")
    t.add("a_b", Num(1.25, 0.5, 2.0, digits=1, signed=True))
    t.add("c", Num(None))
    t.bold.add((0, 1))
    tex = t.to_latex()
    assert [ln for ln in tex.splitlines() if ln.endswith("rule")] == ["\\toprule", "\\midrule", "\\bottomrule"]
    assert "\\begin{tabular}{lr}" in tex
    assert "a\\_b & \\textbf{+1.2 [+0.5, +2.0]} \\\\" in tex and "c & -- \\\\" in tex
    assert "\\caption{ppl: 5\\% of \\{set\\}\\_x \\& $\\Delta$en. \\#draws \\textasciitilde{} 2\\textasciicircum{}3 \\ldots{} done}" in tex
    header, rows = t.numeric()
    assert header == ["arm", "en", "en low", "en high"] and rows == [["a_b", 1.25, 0.5, 2.0], ["c", None, None, None]]
