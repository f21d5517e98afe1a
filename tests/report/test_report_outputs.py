"""What a run leaves for a reader, and what a cached re-run costs: figures in three formats
beside their tables in report.html, every table as CSV, random controls with several draws,
and a fully cached re-run that reuses the last report without importing torch."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import History

from neuronspec.plan.compile import compile_study
from neuronspec.report.plots import read_figure_index
from neuronspec.report.records import list_runs, read_record
from neuronspec.report.model import parse_results
from neuronspec.report.render import result_tables
from neuronspec.spec import load_study

ROOT = Path(__file__).resolve().parents[2]


def test_fully_cached_rerun_reuses_the_report_and_imports_no_torch(history: History) -> None:
    before = list_runs(history.store)
    code = ("import json, sys\nfrom neuronspec.cli import main\n"
            f"rc = main(['run', '-q', {str(history.study)!r}])\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'transformers', 'matplotlib', 'pandas') "
            "if m in sys.modules)}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=history.repo)
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"rc": 0, "heavy": []}
    # -q: the run record's path and nothing else; it is the latest run's, no new folder
    assert lines[:-1] == [f"run record: {history.store / 'runs' / history.second / 'record.json'}"]
    assert list_runs(history.store) == before and out.stderr == ""


def test_a_changed_report_setting_writes_a_new_run(history: History, tmp_path: Path) -> None:
    from neuronspec.cli import main

    study = tmp_path / "tiny.yaml"
    study.write_text(history.study.read_text().replace("formats: [json, markdown, png]", "formats: [json, markdown]"))
    store = tmp_path / "store"
    assert main(["run", "-q", "--store", str(store), str(study)]) == 0
    assert main(["run", "-q", "--store", str(store), str(study)]) == 0  # unchanged: reused
    assert len(list_runs(store)) == 1
    study.write_text(study.read_text().replace("formats: [json, markdown]", "formats: [json]"))
    assert main(["run", "-q", "--store", str(store), str(study)]) == 0
    assert len(list_runs(store)) == 2


def test_run_folder_has_every_table_as_csv_and_every_figure_in_three_formats(history: History) -> None:
    folder = history.store / "runs" / history.second
    results = json.loads((folder / "results.json").read_text())
    tables = result_tables(parse_results(results))
    csvs = sorted((folder / "tables").glob("*.csv"))
    assert len(csvs) == len(tables)
    for path, table in zip(csvs, tables):
        with path.open() as f:
            rows = list(csv.reader(f))
        assert rows[0][0] == table.columns[0] and [r[0] for r in rows[1:]] == [r[0] for r in table.rows]
        assert path.with_suffix(".tex").read_text().count("\\\\\n") == len(table.rows) + 1  # header and rows
    # the evaluation table's CSV: numbers equal to results.json's, each CI in columns of its own
    (main,) = [p for p in csvs if "-ppl-perplexity-per-language-" in p.name]
    with main.open() as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    ppl = results["evaluations"]["ppl"]
    assert {float(rows["base"][lang]) for lang in ("en", "fr", "de")} == {ppl["base"][lang] for lang in ("en", "fr", "de")}
    for lang in ("en", "fr", "de"):
        early = ppl["arms"]["early"]
        assert float(rows["early"][lang]) == early["change"][lang]
        assert [float(rows["early"][f"{lang} low"]), float(rows["early"][f"{lang} high"])] == early["change_ci"][lang]
        assert early["change_ci"][lang][0] <= early["change"][lang] <= early["change_ci"][lang][1]
        control = ppl["arms"]["early-random"]  # the mean of the draws, with their min and max
        draws = [c["change"] for c in ppl["cells"]  # on its own language: the diagonal
                 if c["arm"] == "early-random" and c["lang"] == lang and c.get("mask_lang") in (None, lang)]
        row = rows["early-random (mean of 2 draws)"]
        assert float(row[lang]) == pytest.approx(sum(draws) / 2) == control["change"][lang]
        assert [float(row[f"{lang} low"]), float(row[f"{lang} high"])] == [min(draws), max(draws)]
    assert float(rows["early"]["Δ"]) == ppl["arms"]["early"]["delta"]
    figures = read_figure_index(folder)
    assert {f.file for f in figures} >= {"layers-plnd.png", "layers-specific.png", "matrix-ppl.png"}
    for f in figures:
        for suffix in (".png", ".pdf", ".svg"):
            assert (folder / f.file).with_suffix(suffix).stat().st_size > 0
        assert f.caption and "_" not in f.caption.split(".")[0]  # words, not internal names
    with (folder / "evaluations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["draw"] for r in rows if r["arm"] == "early-random"} == {"1", "2"}


def test_report_html_puts_figures_beside_their_tables_and_each_arm_before_its_control(history: History) -> None:
    html = (history.store / "runs" / history.second / "report.html").read_text()
    sections = re.split(r"<h2>", html)
    by_title = {s.split("</h2>")[0]: s for s in sections[1:]}
    main = next(t for t in by_title if t.startswith("ppl: perplexity per language"))
    first_matrix = next(t for t in by_title if "× evaluated language" in t)  # the arms' matrices, the first: `late`
    assert '<div class="pair">' in by_title[first_matrix] and by_title[first_matrix].count("<img") == 1  # all matrices
    sizes = next(t for t in by_title if t.startswith("neuron sets: size per language"))
    assert by_title[sizes].count("<img") == 2  # plnd and specific per layer
    titles = list(by_title)
    early = titles.index(next(t for t in titles if t.startswith("ppl: early —")))
    control = titles.index(next(t for t in titles if t.startswith("ppl: early-random")))
    assert early < control
    rows = re.findall(r"<tr><td>([^<]*)</td>", by_title[main])
    assert rows.index("early") + 1 == rows.index("early-random (mean of 2 draws)")


def test_adding_draws_reuses_the_earlier_ones(history: History, tmp_path: Path) -> None:
    two = compile_study(load_study(history.study))
    more = tmp_path / "tiny.yaml"
    more.write_text(history.study.read_text().replace("draws: 2", "draws: 3"))
    three = compile_study(load_study(more))
    for sid, stage in two.stages.items():
        assert three.stages[sid].key == stage.key  # every stage of two draws, unchanged
    added = set(three.stages) - set(two.stages)
    assert "mask/early-random/draw3" in added and all("draw3" in sid for sid in added)
    assert len({two.stages[f"mask/early-random/draw{k}"].key for k in (1, 2)}) == 2


def test_an_evaluation_can_evaluate_fewer_draws(history: History, tmp_path: Path) -> None:
    """`draws: 1` on a second evaluation: only draw 1 of the control, the same stages as the first
    evaluation's draw 1 (computed once), reported as one draw; more draws than there are is located."""
    from neuronspec.cli import main

    text = history.study.read_text().replace(
        "  ppl: {metric: perplexity, corpus: ppl, bootstrap: 50}",
        "  ppl: {metric: perplexity, corpus: ppl, bootstrap: 50}\n  one: {metric: perplexity, corpus: ppl, bootstrap: 50, draws: 1}")
    study = tmp_path / "tiny.yaml"
    study.write_text(text)
    plan = compile_study(load_study(study))
    ones = [sid for sid in plan.stages if sid.startswith("eval/one/early-random/")]
    assert ones and all(sid.startswith("eval/one/early-random/draw1/") for sid in ones)
    for sid in ones:
        assert plan.stages[sid].key == plan.stages[sid.replace("eval/one/", "eval/ppl/")].key
    store = tmp_path / "store"
    assert main(["run", "-q", "--store", str(store), str(study)]) == 0
    results = json.loads(next((store / "runs").glob("*/results.json")).read_text())
    two, one = results["evaluations"]["ppl"], results["evaluations"]["one"]
    assert {c.get("draw") for c in one["cells"] if c["arm"] == "early-random"} == {1}
    assert one["arms"]["early-random"]["draw"] == 1 and "draws" not in one["arms"]["early-random"]
    labels = [row[0] for t in result_tables(parse_results(results)) if t.title.startswith("one: ") for row in t.rows]
    assert "early-random (draw 1)" in labels and "early-random (mean of 2 draws)" not in labels
    assert any(t.title.startswith("one: early-random, random draw 1 — deactivated language")
               for t in result_tables(parse_results(results)))
    for cell in one["cells"]:  # the same numbers as the first evaluation's cells
        assert cell["value"] in [c["value"] for c in two["cells"] if (c["arm"], c.get("draw"), c["lang"]) ==
                                 (cell["arm"], cell.get("draw"), cell["lang"])]
    study.write_text(text.replace("draws: 1}", "draws: 3}"))
    out = subprocess.run([sys.executable, "-m", "neuronspec.cli", "plan", str(study)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert re.search(r"tiny\.yaml:\d+:\d+: evaluate\.one\.draws: 3 draws, but the random controls evaluated here have 2 at most",
                     out.stderr + out.stdout), out.stderr + out.stdout


def test_draw_summary_and_control_comparison_against_the_cells(history: History) -> None:
    record = read_record(history.store / "runs" / history.second)
    results = json.loads((history.store / "runs" / history.second / "results.json").read_text())
    ev = results["evaluations"]["ppl"]
    cells = {(c["arm"], c.get("draw"), c["mask_lang"], c["lang"]): c["value"] for c in ev["cells"]}
    base = {lang: cells[(None, None, None, lang)] for lang in ev["languages"]}
    control = ev["matrices"]["early-random"]
    per_draw = {(ml, lang): [100 * (cells[("early-random", d, ml, lang)] - base[lang]) / base[lang] for d in (1, 2)]
                for ml in control["rows"] for lang in control["cols"]}
    for (ml, lang), values in per_draw.items():
        assert abs(control["change"][ml][lang] - sum(values) / 2) < 1e-9
        assert control["spread"][ml][lang] == [min(values), max(values)]
    target = ev["matrices"]["early"]
    beats = [ml for ml in target["rows"] if target["change"][ml][ml] > max(per_draw[(ml, ml)])]
    assert target["control"] == "early-random" and target["beats_control_languages"] == beats
    row = ev["arms"]["early-random"]
    for lang in ev["languages"]:
        assert row["change_ci"][lang] == [min(per_draw[(lang, lang)]), max(per_draw[(lang, lang)])]
    assert record["stages"]["mask/early-random/draw2"]["spec"]["seed"] != record["stages"]["mask/early-random/draw1"]["spec"]["seed"]


def test_a_closed_pipe_ends_quietly(history: History, monkeypatch) -> None:  # noqa: ANN001
    """`neuronspec diff --md | head`: the reader leaves early; no traceback, exit 0."""
    import io

    from neuronspec.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["diff", "--rev", "HEAD", str(history.study), "--md"]) == 0


def test_report_html_shows_its_figures_after_the_folder_moves_or_the_file_travels_alone(history: History,
                                                                                        tmp_path: Path) -> None:
    import shutil
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.images: list[str] = []
            self.links: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found = dict(attrs)
            if tag == "img":
                self.images.append(found["src"] or "")
            if tag == "a":
                self.links.append(found["href"] or "")

    moved = shutil.copytree(history.store / "runs" / history.second, tmp_path / "elsewhere" / "run")
    alone = tmp_path / "mail" / "report.html"
    alone.parent.mkdir()
    shutil.copyfile(moved / "report.html", alone)
    for html in (moved / "report.html", alone):
        parsed = Links()
        parsed.feed(html.read_text())
        assert len(parsed.images) == len(read_figure_index(moved)) > 2
        assert all(src.startswith("data:image/png;base64,") for src in parsed.images)  # nothing to resolve
    vector = [h for h in parsed.links if h.endswith((".pdf", ".svg"))]
    assert vector and not any(h.startswith(("/", "file:")) or ":" in h for h in vector)  # relative to the report
    assert all((moved / h).is_file() for h in vector)  # still there in the moved folder
