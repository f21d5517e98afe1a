"""Sweeps: one study run at several values of one field, and how its sets and effects move.

`neuronspec run FILE --sweep detect.plnd.epsilon.quantile=0.9,0.95,0.99` runs the study once per
value — each an ordinary run (recorded with its `--set`, its note naming the sweep), sharing
every cached stage the values have in common — and writes a sensitivity table (CSV, Markdown)
and figure under `.neuronspec/sweeps/SWEEP_ID/`: set sizes per language and each arm's effect on
its own language (with the random controls' mean beside it) against the swept value.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neuronspec.fileio import write_json, write_text
from neuronspec.report.tidy import write_csv
from neuronspec.spec import Location, Problem, StudyError

#: a sweep is a handful of runs, not a grid search
MAX_VALUES = 12


@dataclass(frozen=True)
class Sweep:
    key: str  # dotted field, as --set takes it
    values: tuple[str, ...]  # each a YAML value, as --set takes it

    def override(self, value: str) -> str:
        return f"{self.key}={value}"


def parse_sweep(text: str) -> Sweep:
    """`KEY=V1,V2,…`: commas inside [] or {} belong to a value (`sites=[ffn],[ffn,attn.v]`)."""
    key, sep, rest = text.partition("=")
    problem = None
    values: list[str] = []
    depth, current = 0, ""
    for ch in rest:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    if not sep or not key.strip():
        problem = "a sweep looks like dotted.key=value1,value2,…"
    elif len(values) < 2 or any(not v for v in values):
        problem = "a sweep needs two or more non-empty values, separated by commas"
    elif len(values) > MAX_VALUES:
        problem = f"a sweep takes at most {MAX_VALUES} values (got {len(values)})"
    elif len(set(values)) != len(values):
        problem = "a value is repeated"
    if problem:
        raise StudyError([Problem(Location("", 0, 0, override=f"--sweep {text}"), key.strip(), problem)])
    return Sweep(key.strip(), tuple(values))


@dataclass(frozen=True)
class SensitivityRow:
    """One number of the sensitivity table (tidy: one row per value × quantity)."""

    value: str  # the swept value
    run_id: str
    quantity: str  # "set size" | "change"
    name: str  # the set, or EVALUATION/ARM for a change
    language: str | None
    number: float | None
    random_mean: float | None  # for a change: the mean of the arm's random controls (same language), if any


def sensitivity_rows(value: str, results: Any) -> list[SensitivityRow]:
    """Set sizes per language and, per evaluation and deactivation arm, the change on the language
    whose set the arm switched off (`deactivated == evaluated`), with its random controls' mean."""
    rows: list[SensitivityRow] = []
    run_id = results.folder.name
    counts = results.layer_counts
    if len(counts):
        sizes = counts.groupby(["set", "language"], dropna=False)["neurons"].sum()
        for (name, lang), n in sizes.items():
            rows.append(SensitivityRow(value, run_id, "set size", str(name), None if lang != lang else lang, float(n), None))
    ev = results.evaluations
    if len(ev):
        own = ev[(ev.arm_kind == "deactivate") & ((ev.deactivated == ev.evaluated) | ev.deactivated.isna())]
        controls = own[own.random_like.notna()]
        for (evaluation, arm, lang), group in own[own.random_like.isna()].groupby(["evaluation", "arm", "evaluated"]):
            matched = controls[(controls.evaluation == evaluation) & (controls.evaluated == lang) & (controls.random_like == arm)]
            rand = matched.change.dropna()
            change = group.change.dropna()
            rows.append(SensitivityRow(value, run_id, "change", f"{evaluation}/{arm}", lang,
                                       float(change.mean()) if len(change) else None,
                                       float(rand.mean()) if len(rand) else None))
    return rows


def run_sweep(sweep: Sweep, load: Callable[[Sequence[str]], Any], run: Callable[[Any, str], Any], store_root: Path,
              say: Callable[[str], None]) -> tuple[Path, list[SensitivityRow]]:
    """Load and validate every value first (all problems at once, nothing run), then run each;
    `load(overrides)` gives a LoadedStudy, `run(loaded, note)` its `neuronspec.api.Results` (or None
    when a stage failed: the sweep stops there, finished stages stay cached)."""
    problems: list[Problem] = []
    studies = []
    for value in sweep.values:
        try:
            studies.append(load([sweep.override(value)]))
        except StudyError as exc:
            problems += exc.problems
    if problems:
        raise StudyError(problems)
    sweep_id = time.strftime("%Y%m%d-%H%M%S") + f"-{studies[0].study.name}-{uuid.uuid4().hex[:6]}"
    rows: list[SensitivityRow] = []
    runs: list[str] = []
    for i, (value, loaded) in enumerate(zip(sweep.values, studies), 1):
        say(f"sweep {i}/{len(studies)}: {sweep.override(value)}")
        results = run(loaded, f"sweep {sweep_id}: {sweep.override(value)}")
        if results is None:
            raise SweepFailed(f"sweep stopped at {sweep.override(value)} (a stage failed; finished stages are cached)")
        runs.append(results.folder.name)
        rows += sensitivity_rows(value, results)
    folder = store_root / "sweeps" / sweep_id
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "sweep.json", {"sweep_id": sweep_id, "key": sweep.key, "values": list(sweep.values), "runs": runs,
                                       "rows": [asdict(r) for r in rows]})
    write_csv(folder / "sensitivity.csv", rows, SensitivityRow)
    write_text(folder / "sensitivity.md", "\n\n".join(t.to_markdown() for t in sensitivity_tables(sweep, rows)) + "\n")
    plot_sensitivity(sweep, rows, folder / "sensitivity.png")
    return folder, rows


class SweepFailed(RuntimeError):
    """A run of the sweep failed."""


def sensitivity_tables(sweep: Sweep, rows: list[SensitivityRow]) -> list[Any]:
    """Two tables, one row per swept value: set sizes per set × language, and own-language changes
    per evaluation/arm × language (`x (rand y)`: the random controls' mean beside it)."""
    from neuronspec.report.tables import Table

    out = []
    for quantity, title in (("set size", "neurons per set and language"), ("change", "change on the arm's own language (random controls' mean)")):
        picked = [r for r in rows if r.quantity == quantity]
        columns = list(dict.fromkeys(f"{r.name} {r.language}" if r.language else r.name for r in picked))
        if not columns:
            continue
        t = Table(f"{sweep.key}: {title}", [sweep.key, *columns])
        for value in sweep.values:
            cells = {f"{r.name} {r.language}" if r.language else r.name: r for r in picked if r.value == value}
            t.add(value, *(_cell(cells.get(c)) for c in columns))
        out.append(t)
    return out


def _cell(row: SensitivityRow | None) -> str:
    if row is None or row.number is None:
        return "–"
    if row.quantity == "set size":
        return f"{row.number:,.0f}"
    return f"{row.number:+.1f}" + (f" (rand {row.random_mean:+.1f})" if row.random_mean is not None else "")


def plot_sensitivity(sweep: Sweep, rows: list[SensitivityRow], path: Path) -> Path | None:
    """Left: set size per set × language against the swept value; right: each arm's own-language
    change (solid) and its random controls' mean (dashed, same colour)."""
    from neuronspec.plotting import PAPER_FORMATS, pyplot, save_figure

    sizes = [r for r in rows if r.quantity == "set size"]
    changes = [r for r in rows if r.quantity == "change" and r.number is not None]
    if not sizes and not changes:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), constrained_layout=True)
    x = list(range(len(sweep.values)))
    for ax, picked, ylabel in ((axes[0], sizes, "neurons in the set"), (axes[1], changes, "change on own language")):
        series = list(dict.fromkeys((r.name, r.language) for r in picked))
        for k, (name, lang) in enumerate(series):
            colour = f"C{k % 10}"
            by_value = {r.value: r for r in picked if (r.name, r.language) == (name, lang)}
            ys = [by_value[v].number if v in by_value else None for v in sweep.values]
            label = f"{name} {lang}" if lang else name
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", color=colour, label=label)
            rand = [by_value[v].random_mean if v in by_value else None for v in sweep.values]
            if any(r is not None for r in rand):
                ax.plot(x, [float("nan") if r is None else r for r in rand], linestyle="--", color=colour, alpha=0.7)
        ax.set_xticks(x, list(sweep.values))
        ax.set_xlabel(sweep.key, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        if series:
            ax.legend(fontsize=7, frameon=False)
    axes[1].axhline(0, color="0.6", linewidth=0.6)
    axes[1].set_title("dashed: random controls' mean", fontsize=8)
    return save_figure(fig, path, dpi=150, formats=PAPER_FORMATS)
