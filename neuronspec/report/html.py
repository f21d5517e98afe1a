"""A self-contained HTML report of a run: its summary, every result table with its figure
beside it (PNG embedded as base64, captioned in words), the figures no table claims after
them, and the study file — one file to mail or archive, no assets beside it."""

from __future__ import annotations

import base64
import time
from html import escape
from pathlib import Path
from typing import Any

from neuronspec.fileio import write_text
from neuronspec.report.plots import Figure
from neuronspec.report.tables import Table

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 .3em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.caption{color:#555;font-size:.9em;margin:.2em 0 1.2em;max-width:60em}
.pair{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.pair>div{flex:0 1 auto;min-width:0}.pair>div:first-child{overflow-x:auto}
.pair>.figs{flex:1 1 480px;max-width:760px}
figure{margin:.5em 0;max-width:760px}
figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.file{color:#999;font-size:.85em}
pre{background:#f7f7f7;padding:1em;overflow:auto}
"""


def run_summary(record: dict[str, Any]) -> Table:
    """Who, what, when: one table of a run's provenance."""
    t = Table(f"run {record.get('run_id')}", ["", "value"])
    stages = record.get("stages", {})
    computed = sum(1 for s in stages.values() if s.get("computed"))
    g = record.get("git") or {}
    model = record.get("model") or {}
    versions = record.get("versions") or {}
    t.add("study", f"{record.get('study', {}).get('name')} ({record.get('study_file') or 'no file'})")
    t.add("date", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("created") or 0)))
    t.add("stages", f"{computed} computed, {len(stages) - computed} cached")
    t.add("duration", f"{record.get('seconds') or 0:.1f} s")
    models = record.get("models") or {None: model}  # a multi-model study: one line per model
    for name, m in models.items():
        t.add(f"model {name}" if name else "model",
              f"{m.get('id')} ({m.get('dtype')}, {str(m.get('digest') or m.get('revision') or '')[:12]})")
    t.add("git", f"{g['commit'][:10]}{' (study modified)' if g.get('study_dirty') else ''}" if g.get("commit") else "not in git")
    if record.get("overrides"):
        t.add("overrides", ", ".join(record["overrides"]))
    t.add("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return t


def table_html(table: Table, figure: str = "") -> str:
    """The table under its title, with `figure` (HTML) beside it when given."""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for r, row in enumerate(table.rows):
        cells = "".join(f"<td><b>{escape(c)}</b></td>" if (r, i) in table.bold else f"<td>{escape(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    caption = f'<div class="caption">{escape(table.caption)}</div>' if table.caption else ""
    html = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n{caption}"
    if figure:
        html = f'<div class="pair"><div>{html}</div><div class="figs">{figure}</div></div>'
    return f"<h2>{escape(table.title)}</h2>\n{html}\n"


def figure_html(figure: Figure, root: Path) -> str:
    data = base64.b64encode((root / figure.file).read_bytes()).decode("ascii")
    vector = [f'<a href="{escape(Path(figure.file).with_suffix(s).as_posix())}">{s[1:].upper()}</a>'
              for s in (".pdf", ".svg") if (root / figure.file).with_suffix(s).exists()]
    links = f", also {' and '.join(vector)}" if vector else ""
    return (f'<figure><img alt="{escape(figure.caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{escape(figure.caption)} <span class="file">({escape(figure.file)}{links})</span></figcaption></figure>')


def render_html(title: str, tables: list[Table], figures: list[Figure], root: Path, study_text: str | None = None) -> str:
    """Each figure beside the table it illustrates (by title); the rest after the tables."""
    parts = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    titles = {t.title for t in tables} | {t.anchor for t in tables if t.anchor}
    beside: dict[str, list[Figure]] = {}
    for f in figures:
        if f.table in titles and (root / f.file).exists():
            beside.setdefault(f.table, []).append(f)
    for t in tables:
        mine = beside.pop(t.title, []) + beside.pop(t.anchor, []) if t.anchor else beside.pop(t.title, [])
        parts.append(table_html(t, "".join(figure_html(f, root) for f in mine)))
    rest = [f for f in figures if f.table not in titles and (root / f.file).exists()]
    if rest:
        parts.append("<h2>other figures</h2>")
        parts += [figure_html(f, root) for f in rest]
    if study_text:
        parts.append(f"<h2>study</h2><details><summary>study file as run</summary><pre>{escape(study_text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html_report(folder: Path, record: dict[str, Any], tables: list[Table]) -> Path:
    """`folder/report.html` with the run summary, `tables`, and the folder's figures."""
    from neuronspec.report.plots import read_figure_index

    figures = read_figure_index(Path(folder))
    title = f"neuronspec: {record.get('study', {}).get('name')} — run {record.get('run_id')}"
    return write_text(Path(folder) / "report.html",
                      render_html(title, [run_summary(record), *tables], figures, Path(folder), record.get("study_text")))
