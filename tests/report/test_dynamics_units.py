"""The dynamics table from hand-made results: one column per model, gaps where a model lacks a part."""

from __future__ import annotations

from pathlib import Path

from neuronspec.report.dynamics import dynamics, dynamics_table, plot_dynamics
from neuronspec.report.model import RunResults


def _evaluation(metric: str, base: dict[str, float]) -> dict:
    return {"metric": metric, "bootstrap": 0, "cells": [], "languages": list(base), "base": base, "arms": {},
            "matrices": {}, "unit": "points"}


def results(model: str, layers: int, lrds: float, regions: dict[str, int] | None = None,
            lape: dict[str, int] | None = None) -> RunResults:
    out: dict = {"study": "s", "model": {"id": model}, "dims": {"num_layers": layers, "intermediate": 10}, "detection": {},
                 "evaluations": {"ppl": _evaluation("perplexity", {"en": 12.5, "zh": 40.0}),
                                 "mc": _evaluation("choice", {"en": 0.5})}}
    if regions is not None:
        out["detection"]["linguafranca"] = {
            "scores": {"lrds": lrds, "sads": -lrds / 2},
            "regions": {"threshold": 2.0, "sklr": sum(regions.values()), "counts": regions, "max_reachable_z": 1.0},
            "per_layer": {"lrds": [lrds] * layers, "sads": [0.0] * layers}}
    if lape is not None:
        out["detection"]["lape"] = {"counts": lape, "selected": 1, "candidates": 2, "filter_value": 0.5}
    return RunResults.model_validate(out)


def test_rows_follow_the_models_and_gaps_read_as_dashes(tmp_path: Path) -> None:
    d = dynamics({"big": results("m-big", 4, 0.25, {"en": 3, "zh": 5}, lape={"en": 7}),
                  "small": results("m-small", 2, 0.5, {"en": 1, "zh": 0})})
    rows = {r.measure: r.values for r in d.rows}
    assert rows["model"] == {"big": "m-big", "small": "m-small"}
    assert rows["FFN neurons (layers × width)"] == {"big": 40, "small": 20}
    assert rows["SKLR (key linguistic regions, z > 2.0)"] == {"big": 8, "small": 1}
    assert rows["  region size zh"] == {"big": 5, "small": 0}
    assert rows["LAPE neurons en"] == {"big": 7, "small": None}
    assert rows["perplexity zh (ppl, untouched model)"] == {"big": 40.0, "small": 40.0}
    assert not any("mc" in m for m in rows)  # only perplexity evaluations have a base row
    t = dynamics_table(d)
    assert t.columns == ["measure", "big", "small"]
    cells = {row[0]: row[1:] for row in t.rows}
    assert cells["LRDS (same language − different language)"] == ["0.2500", "0.5000"]
    assert cells["LAPE neurons en"] == ["7", "–"]
    path = plot_dynamics(d, tmp_path / "dyn.png")  # 4 and 2 layers: relative depth
    assert path is not None and path.stat().st_size > 0


def test_without_linguafranca_there_are_no_score_rows_and_no_plot(tmp_path: Path) -> None:
    d = dynamics({"a": results("x", 2, 0.0), "b": results("y", 2, 0.0)})
    assert [r.measure for r in d.rows] == ["model", "layers", "FFN neurons (layers × width)",
                                                 "perplexity en (ppl, untouched model)", "perplexity zh (ppl, untouched model)"]
    assert plot_dynamics(d, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
