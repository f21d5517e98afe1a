"""A self-contained HTML report of a run: its summary, every result table, and the PNG
plots embedded as base64 — one file to mail or archive, no assets beside it."""

from __future__ import annotations

import base64
import time
from html import escape
from pathlib import Path
from typing import Any

from neuronspec.report.tables import Table

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 .3em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.caption{color:#666;font-size:.9em;margin-bottom:1.2em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
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


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for r, row in enumerate(table.rows):
        cells = "".join(f"<td><b>{escape(c)}</b></td>" if (r, i) in table.bold else f"<td>{escape(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    caption = f'<div class="caption">{escape(table.caption)}</div>' if table.caption else ""
    return f"<h2>{escape(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n{caption}\n"


def render_html(title: str, tables: list[Table], images: list[Path], study_text: str | None = None,
                root: Path | None = None) -> str:
    """`images` are captioned by their path below `root` (a multi-model run keeps each model's plots in a subfolder)."""
    parts = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    parts += [table_html(t) for t in tables]
    if images:
        parts.append("<h2>plots</h2>")
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode("ascii")
        name = str(img.relative_to(root).with_suffix("")) if root is not None else img.stem
        parts.append(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{data}"><figcaption>{escape(name)}</figcaption></figure>')
    if study_text:
        parts.append(f"<h2>study</h2><details><summary>study file as run</summary><pre>{escape(study_text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html_report(folder: Path, record: dict[str, Any], tables: list[Table]) -> Path:
    """`folder/report.html` with the run summary, `tables`, and every PNG in the folder."""
    images = sorted(Path(folder).glob("*.png")) + sorted(Path(folder).glob("*/*.png"))
    title = f"neuronspec: {record.get('study', {}).get('name')} — run {record.get('run_id')}"
    path = Path(folder) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render_html(title, [run_summary(record), *tables], images, record.get("study_text"), Path(folder)), encoding="utf-8")
    tmp.replace(path)
    return path
