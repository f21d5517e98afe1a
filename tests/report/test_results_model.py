"""The typed results: an old-format run record read through the one adapter, draws kept apart,
and the JSON shape users read."""

from __future__ import annotations

import json
from pathlib import Path

from report_helpers import History

from neuronspec.report.model import RunResults, parse_results, to_json
from neuronspec.report.records import read_record, results_from_record
from neuronspec.report.render import result_tables

DATA = Path(__file__).parent / "data"


def _with_intervals_in_the_main_table(old: str) -> str:
    """The old report as the report shows it now: its separate paired-CI table (2 digits) folded
    into the main table at the main table's 1 digit, the CI's caption appended to the main one."""
    import re

    ci_table = re.search(r"### ppl: % ppl change with paired 95% CI\n\n(.*?)\n\n(\[low, high\]: .*?); random controls: "
                         r"\(min…max\) over their draws\n\n", old, re.S)
    assert ci_table is not None
    rounded = {}
    for line in ci_table.group(1).splitlines()[2:]:
        arm, *cells = [c.strip() for c in line.strip("|").split("|")]
        if "[" in cells[0]:
            rounded[arm] = [re.sub(r"[-+]?\d+\.\d+", lambda m: f"{float(m.group()):+.1f}", c) for c in cells]
    new = old.replace(ci_table.group(0), "")
    for arm, cells in rounded.items():
        row = re.search(rf"^\| {arm} \|(.*)$", new, re.M)
        assert row is not None
        rest = [c.strip() for c in row.group(1).strip("|").split("|")][len(cells):]
        new = new.replace(row.group(0), "| " + " | ".join([arm, *cells, *rest]) + " |")
    caption = ci_table.group(2).replace("[low, high]: documents", "[low, high]: paired 95% CI, documents")
    return new.replace("(MWork's tables); random controls", f"(MWork's tables); {caption}; random controls")


def test_a_record_from_before_results_were_embedded_renders_the_report_it_had() -> None:
    """data/legacy-record.json and data/legacy-report.md were written by neuronspec before the
    typed results (9f8d15c): a record with `stage_metrics`, `sets` and `masks` keyed by arm.
    Read through the adapter, it renders the same tables, number for number."""
    record = json.loads((DATA / "legacy-record.json").read_text(encoding="utf-8"))
    assert "stage_metrics" in record and "results" not in record  # the old format
    results = results_from_record(record)
    assert isinstance(results, RunResults)
    tables = result_tables(results)
    # what the report added since: a p-value table, and row wins said strictly (the old run had no ties)
    added = [t for t in tables if "one-sided p" in t.title]
    markdown = f"# {results.study}\n\n" + "\n".join(t.to_markdown() for t in tables if t not in added)
    expected = (DATA / "legacy-report.md").read_text(encoding="utf-8").replace("It is the largest", "It is strictly the largest")
    # (and the caption now says which way Δ points for perplexity)
    assert markdown == _with_intervals_in_the_main_table(expected).replace(
        "Δ = Δen − Δn-en (MWork's tables)", "Δ = Δen − Δn-en (MWork's tables; perplexity rises when a model is damaged, so MWork's "
        "'high Δ' — the baseline spared, the other languages hurt — is a large negative Δ here)")
    # the p-values, recounted from the record's own stage metrics: draws of early-random at least as damaging
    metrics = record["stage_metrics"].values()
    base = {m["lang"]: m["value"] for m in metrics if m["arm"] is None and m["evaluation"] == "ppl"}
    own = {m["lang"]: m["value"] for m in metrics if m["arm"] == "early" and m["mask_lang"] == m["lang"] and m["evaluation"] == "ppl"}
    draws = [m for m in metrics if m["arm"] == "early-random" and m["mask_lang"] == m["lang"] and m["evaluation"] == "ppl"]
    expected_p = [f"{(1 + sum(1 for d in draws if d['lang'] == lang and d['value'] / base[lang] >= own[lang] / base[lang])) / (1 + sum(1 for d in draws if d['lang'] == lang)):.2f}"
                  for lang in ("en", "fr", "de")]
    assert [row[1:] for row in added[0].rows] == [expected_p]
    ppl = results.evaluations["ppl"]
    assert ppl.bootstrap == 50  # the evaluation's own resamples, not a default
    # the record's per-document NLLs give the same paired CIs the old report printed
    early = ppl.cell("early", None, "fr", "en")
    assert early is not None and early.change_ci is not None and early.change_ci[0] <= early.change <= early.change_ci[1]


def test_a_run_folder_from_before_results_were_embedded_still_opens(tmp_path: Path) -> None:
    """An old run folder holds the old record and a results.json of the old shape (masks keyed
    by arm): `report` and the API read it through the adapter instead of failing on that file."""
    from neuronspec.api import Results
    from neuronspec.cli import main

    folder = tmp_path / "store" / "runs" / "20261101-120000-tiny-abcdef"
    folder.mkdir(parents=True)
    record = json.loads((DATA / "legacy-record.json").read_text(encoding="utf-8"))
    (folder / "record.json").write_text(json.dumps({**record, "run_id": folder.name}), encoding="utf-8")
    cells = [{k: v for k, v in m.items() if k not in ("evaluation", "kind", "bootstrap")} for m in record["stage_metrics"].values()]
    (folder / "results.json").write_text(json.dumps({  # the old shape: masks keyed by arm
        "study": "tiny", "masks": record["masks"], "sets": record["sets"], "dims": record["dims"], "model": record["model"],
        "evaluations": {"ppl": {"metric": "perplexity", "bootstrap": 50, "cells": cells}}}), encoding="utf-8")
    assert Results.from_folder(folder).data.evaluations["ppl"].bootstrap == 50
    assert main(["report", str(folder), "-q"]) == 0 and (folder / "report.html").exists()


def test_every_draw_of_a_random_control_keeps_its_own_mask(history: History) -> None:
    """`masks` were keyed by arm, so a control's second draw overwrote its first; now each
    (arm, draw, language) is one entry, in results.json and in the record."""
    folder = history.store / "runs" / history.second
    for results in (parse_results(json.loads((folder / "results.json").read_text())), results_from_record(read_record(folder))):
        assert isinstance(results, RunResults)
        keys = {(m.arm, m.draw, m.lang) for m in results.masks}
        assert {("early-random", d, lang) for d in (1, 2) for lang in ("en", "fr", "de")} <= keys
        assert {("early", None, lang) for lang in ("en", "fr", "de")} <= keys
        table = next(t for t in result_tables(results) if t.title.startswith("arms: neurons"))
        assert [r[0] for r in table.rows].count("early-random (each of 2 draws)") == 3


def test_results_json_keeps_the_names_users_read(history: History) -> None:
    folder = history.store / "runs" / history.second
    data = json.loads((folder / "results.json").read_text())
    cells = data["evaluations"]["ppl"]["cells"]
    assert all({"arm", "mask_lang", "lang", "value", "n", "ci", "metric"} <= set(c) for c in cells)
    assert {c.get("draw") for c in cells if c["arm"] == "early-random"} == {1, 2}
    assert all("draw" not in c for c in cells if c["arm"] != "early-random")
    assert all("doc_nll" in c for c in cells)  # the evaluator's own fields stay beside the headline
    # a round trip through the type changes nothing
    assert to_json(parse_results(data)) == data
