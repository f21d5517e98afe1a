"""Figures a paper can take: drawn at the column or page width they are printed at, no text
under 7 pt there, error bars wherever a CI exists, colour bars labelled with the data's range."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from neuronspec.plotting import STYLES
from neuronspec.report.plots import colour_ticks, write_plots
from neuronspec.report.records import results_from_record
from neuronspec.report.render import arm_order

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def results():  # noqa: ANN201
    """The legacy tiny run: a family arm with paired CIs, its random control (2 draws), a matrix."""
    return results_from_record(json.loads((DATA / "legacy-record.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize("style", ["single", "double"])
def test_every_figure_is_its_print_width_with_no_text_under_7pt(results, style: str, tmp_path: Path) -> None:  # noqa: ANN001
    order = {name: arm_order(ev) for name, ev in results.evaluations.items()}
    figures = write_plots(results, tmp_path, order, "auto", STYLES[style])
    assert {f.file for f in figures} >= {"arms-ppl.png", "matrix-ppl.png", "forest-ppl.png"}
    for f in figures:
        pdf = (tmp_path / f.file).with_suffix(".pdf").read_bytes()
        box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
        assert box is not None and float(box.group(1)) == pytest.approx(72 * STYLES[style].width, abs=0.5), f.file
        # SVG text stays text (svg.fonttype none): every font size as written, in points at the printed size
        sizes = [float(s) for s in re.findall(r"font(?:-size)?:\s*([\d.]+)px", (tmp_path / f.file).with_suffix(".svg").read_text())]
        assert sizes and min(sizes) >= 7.0, (f.file, sorted(set(sizes)))


def test_the_headline_figure_draws_each_arms_confidence_interval(results, tmp_path: Path) -> None:  # noqa: ANN001
    """arms-EVAL: every arm's own-language change with its paired CI as error bars (matplotlib's
    errorbar lines, read back from the figure), beside the evaluation's main table."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import LineCollection

    import neuronspec.plotting as plotting

    ev = results.evaluations["ppl"]
    kept = {}
    real_save = plotting.save_figure

    def keep(fig, path, **kw):  # noqa: ANN001, ANN202
        kept[Path(path).name] = [seg for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)
                                 for seg in c.get_segments()]
        return real_save(fig, path, **kw)

    import neuronspec.report.plots as plots

    plots.save_figure = keep
    try:
        fig = plots.plot_arms("ppl", ev, arm_order(ev), tmp_path / "arms-ppl.png", "arms/ppl")
    finally:
        plots.save_figure = real_save
    assert fig is not None and fig.table == "arms/ppl"
    bars = sorted((round(min(s[:, 1]), 6), round(max(s[:, 1]), 6)) for s in kept["arms-ppl.png"] if len(s) == 2
                  and s[0, 0] == s[1, 0])
    want = sorted((round(lo, 6), round(hi, 6)) for arm in ("early", "early-random")
                  for lo, hi in (ev.arms[arm].change_ci[lang] for lang in ev.languages))
    assert bars == want  # the set's paired CIs and the control's min–max over its draws, each drawn

    # a language whose own set is empty (MWork's sets leave English out) is the untouched model: not drawn
    empty = ev.model_copy(update={"cells": [c.model_copy(update={"deactivated": 0}) if c.arm and c.mask_lang == "en" else c
                                            for c in ev.cells]})
    plots.save_figure = keep
    try:
        fig = plots.plot_arms("ppl", empty, arm_order(empty), tmp_path / "arms-empty.png", "arms/ppl")
    finally:
        plots.save_figure = real_save
    bars = sorted((round(min(s[:, 1]), 6), round(max(s[:, 1]), 6)) for s in kept["arms-empty.png"] if len(s) == 2
                  and s[0, 0] == s[1, 0])
    assert bars == sorted((round(lo, 6), round(hi, 6)) for arm in ("early", "early-random")
                          for lo, hi in (ev.arms[arm].change_ci[lang] for lang in ev.languages if lang != "en"))


def test_the_colour_bar_is_labelled_with_the_datas_own_extremes() -> None:
    assert colour_ticks(-0.4, 5.2, 1.0) == [-0.4, 0.0, 1.0, 5.2]  # not ±1 while cells reach +5
    assert colour_ticks(-2.9, 3.0, 1.0) == [-2.9, -1.0, 0.0, 1.0, 3.0]
    ticks = colour_ticks(3.0, 1.8e6, 1.0)
    assert ticks[-1] == 1.8e6 and 1e6 not in ticks and 1e5 in ticks and 0.0 in ticks  # 10⁶ would crowd 1.8·10⁶
