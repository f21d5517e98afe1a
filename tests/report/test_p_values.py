"""Empirical p-values of set arms against their random controls, and strict row wins."""

from __future__ import annotations

import pytest

from neuronspec.report.model import Cell, RunResults
from neuronspec.report.render import result_tables
from neuronspec.report.results import evaluation
from neuronspec.report.tidy import evaluation_rows


def _ppl(arm: str | None, lang: str, value: float, *, mask: str | None = None, draw: int | None = None,
         like: str | None = None) -> Cell:
    return Cell(arm=arm, arm_kind="deactivate" if arm else None, draw=draw, random_like=like, mask_lang=mask, lang=lang,
                metric="perplexity", value=value, higher_is_better=False, deactivated=5 if arm else None)


def _study() -> list[Cell]:
    """Base 10 on en and fr; the set arm (one set per language) and a 4-draw control of it."""
    cells = [_ppl(None, "en", 10.0), _ppl(None, "fr", 10.0)]
    own = {("en", "en"): 12.0, ("en", "fr"): 11.0, ("fr", "en"): 10.5, ("fr", "fr"): 13.0}
    cells += [_ppl("set", lang, v, mask=ml) for (ml, lang), v in own.items()]
    draws = {("en", "en"): [11.0, 12.0, 10.2, 13.0], ("fr", "fr"): [10.1, 10.2, 10.3, 10.4],
             ("en", "fr"): [11.0, 11.0, 11.0, 11.0], ("fr", "en"): [10.0, 10.0, 10.0, 10.0]}
    cells += [_ppl("rand", lang, v, mask=ml, draw=d + 1, like="set") for (ml, lang), vs in draws.items() for d, v in enumerate(vs)]
    return cells


def test_p_is_one_plus_draws_at_least_as_damaging_over_one_plus_draws() -> None:
    ev = evaluation("perplexity", _study(), "en", resamples=0)
    p = {(c.mask_lang, c.lang): c.p_value for c in ev.cells if c.arm == "set"}
    # en on en: +20 %; draws +10, +20, +2, +30 → two at least as damaging (the tie counts against the set)
    assert p[("en", "en")] == pytest.approx((1 + 2) / (1 + 4))
    assert p[("fr", "fr")] == pytest.approx(1 / 5)  # +30 % against draws of at most +4 %: the smallest p 4 draws allow
    assert p[("en", "fr")] == pytest.approx(1.0)  # every draw as damaging (all +10 %)
    assert all(c.p_value is None for c in ev.cells if c.arm != "set")  # the control and the base have none
    rows = {(r.arm, r.deactivated, r.evaluated): r for r in evaluation_rows(RunResults(study="s", evaluations={"ppl": ev}))}
    assert rows[("set", "fr", "fr")].p_value == pytest.approx(0.2) and rows[("set", "fr", "fr")].control_draws == 4
    assert rows[("rand", "fr", "fr")].p_value is None
    table = next(t for t in result_tables(RunResults(study="s", evaluations={"ppl": ev})) if "one-sided p" in t.title)
    assert table.rows == [["set", "0.60", "0.20"]]


def test_accuracy_damage_is_a_drop_and_enhancement_a_gain() -> None:
    def acc(arm: str | None, value: float, kind: str | None = None, draw: int | None = None, like: str | None = None) -> Cell:
        return Cell(arm=arm, arm_kind=kind, draw=draw, random_like=like, lang="en", metric="acc", value=value,
                    higher_is_better=True)
    drops = [acc(None, 0.6), acc("off", 0.3, "deactivate"),
             *(acc("rand", v, "deactivate", d, "off") for d, v in enumerate([0.5, 0.3, 0.55], 1))]
    (off,) = [c for c in evaluation("choice", drops, "en", resamples=0).cells if c.arm == "off"]
    assert off.p_value == pytest.approx((1 + 1) / 4)  # one draw (0.3) dropped as far
    gains = [acc(None, 0.6), acc("up", 0.7, "enhance"), *(acc("rand", v, "enhance", d, "up") for d, v in enumerate([0.65, 0.6], 1))]
    (up,) = [c for c in evaluation("choice", gains, "en", resamples=0).cells if c.arm == "up"]
    assert up.p_value == pytest.approx(1 / 3)  # no draw gained as much


def test_a_tied_row_is_not_a_win() -> None:
    cells = [c if not (c.arm == "set" and c.mask_lang == "en" and c.lang == "fr") else c.model_copy(update={"value": 12.0})
             for c in _study()]  # en's set: +20 % on en and +20 % on fr
    m = evaluation("perplexity", cells, "en", resamples=0).matrices["set"]
    assert (m.diagonal_largest, m.diagonal_ties) == (1, 1)


def test_the_forest_plot_is_drawn_beside_the_p_value_table(tmp_path) -> None:  # noqa: ANN001
    from neuronspec.report.plots import write_plots

    ev = evaluation("perplexity", _study(), "en", resamples=0)
    results = RunResults(study="s", evaluations={"ppl": ev}, dims={"num_layers": 2})
    figures = {f.file: f for f in write_plots(results, tmp_path, {"ppl": ["set", "rand"]})}
    forest = figures["forest-ppl.png"]
    table = next(t for t in result_tables(results) if "one-sided p" in t.title)
    assert forest.table == table.title  # the HTML report puts the figure beside its table
    assert all((tmp_path / f"forest-ppl.{ext}").stat().st_size > 0 for ext in ("png", "pdf", "svg"))
    svg = (tmp_path / "forest-ppl.svg").read_text()
    assert svg.count("p = 0.60") == 1 and svg.count("p = 0.20") == 1  # one row per language, each with its p


def test_delta_eng_is_english_under_the_other_sets_when_its_own_set_is_empty() -> None:
    """MWork's sets exclude English's neurons (plnd[lang] - plnd[en]): English's own set is empty,
    so ΔEng is English's change under each other language's set (mean), not a vacuous 0."""
    def cell(arm: str | None, ml: str | None, lang: str, value: float, n: int = 5, draw: int | None = None) -> Cell:
        return Cell(arm=arm, arm_kind="deactivate" if arm else None, mask_lang=ml, lang=lang, metric="perplexity",
                    value=value, higher_is_better=False, deactivated=n if arm else None, draw=draw,
                    random_like="set" if draw else None)
    cells = [cell(None, None, lang, 10.0) for lang in ("en", "fr", "de")]
    cells += [cell("set", "en", "en", 10.0, n=0), cell("set", "fr", "fr", 15.0), cell("set", "de", "de", 13.0),
              cell("set", "fr", "en", 11.0), cell("set", "de", "en", 10.4)]
    cells += [cell("rand", ml, lang, v, n=0 if ml == "en" else 5, draw=d)
              for d, shift in ((1, 0.0), (2, 0.2)) for ml, lang, v in
              (("en", "en", 10.0), ("fr", "fr", 10.1 + shift), ("de", "de", 10.1), ("fr", "en", 10.2), ("de", "en", 10.0 + shift))]
    ev = evaluation("perplexity", cells, "en", resamples=0)
    p = {(c.mask_lang, c.lang): c.p_value for c in ev.cells if c.arm == "set"}
    assert p[("en", "en")] is None and p[("fr", "fr")] == pytest.approx(1 / 3)  # an empty set is not tested
    row = ev.arms["set"]
    assert row.delta_eng == pytest.approx((10.0 + 4.0) / 2) and row.delta_eng_source == "other_sets"
    assert row.delta_n_eng == pytest.approx((50.0 + 30.0) / 2)
    assert row.delta == pytest.approx(7.0 - 40.0)
    ctl = ev.arms["rand"]  # the control: each draw's mean over the other sets, then the mean over draws
    assert ctl.delta_eng == pytest.approx(((2.0 + 0.0) / 2 + (2.0 + 2.0) / 2) / 2) and ctl.delta_eng_source == "other_sets"
    table = next(t for t in result_tables(RunResults(study="s", evaluations={"ppl": ev})) if "per language" in t.title)
    assert "under the other languages' sets" in table.caption
    # with English's own set non-empty, ΔEng stays English under its own set
    own = [c.model_copy(update={"deactivated": 5}) if c.arm == "set" and c.mask_lang == "en" else c for c in cells]
    assert evaluation("perplexity", own, "en", resamples=0).arms["set"].delta_eng == pytest.approx(0.0)


def test_an_arm_with_two_controls_is_tested_against_the_first_declared() -> None:
    cells = _study() + [_ppl("wide", lang, 30.0, mask=ml, draw=d, like="set")
                        for ml, lang in (("en", "en"), ("fr", "fr")) for d in (1, 2)]
    ev = evaluation("perplexity", cells, "en", resamples=0)
    p = {(c.mask_lang, c.lang): (c.p_value, c.control_draws) for c in ev.cells if c.arm == "set"}
    assert p[("fr", "fr")] == (pytest.approx(1 / 5), 4)  # rand (4 draws, declared first), not wide (2 draws of +200 %)
    reordered = [c for c in cells if c.arm == "wide"] + [c for c in cells if c.arm != "wide"]
    p = {(c.mask_lang, c.lang): c.p_value for c in evaluation("perplexity", reordered, "en", resamples=0).cells if c.arm == "set"}
    assert p[("fr", "fr")] == pytest.approx(3 / 3)
