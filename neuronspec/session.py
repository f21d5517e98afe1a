"""Run a study end to end: one live progress display, the plan's stale stages, then the
run folder (record, results, tables, figures, report.html) — or, when nothing changed, the
previous run's folder as it is. The command line and the Python API both run studies here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from neuronspec.report.model import Results
from neuronspec.report.tables import Table
from neuronspec.spec import StudyError


@contextmanager
def progress_display(console: Console, enabled: bool, total_stages: int = 0) -> Iterator[Any]:
    """One live display for the run: `stage N of M` with the ETA over stages, and below it a
    bar for the current stage's long step (documents, tokens/s). Yields (factory, on_stage)."""
    if not enabled:
        yield None, None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        overall = progress.add_task("stages", total=total_stages or None, rate="")

        def on_stage(stage: Any, event: str) -> None:
            if event == "start":
                done = int(progress.tasks[0].completed)
                progress.update(overall, description=f"stage {done + 1} of {total_stages}: {stage.id}")
            elif event == "done":
                progress.advance(overall)

        @contextmanager
        def factory(description: str, total: int | None) -> Iterator[Any]:
            task = progress.add_task(f"  {escape(description)}", total=total, rate="")
            start, seen = time.perf_counter(), [0]

            def advance(n: int = 1, tokens: int = 0) -> None:
                seen[0] += tokens
                rate = f"{seen[0] / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s" if seen[0] else ""
                progress.update(task, advance=n, rate=rate)

            try:
                yield advance
            finally:
                progress.remove_task(task)

        yield factory, on_stage


def stages_to_run(variants: list[Any], store: Any, force: Sequence[str], only: Sequence[str]) -> int:
    """How many stages the run will compute (not in the store, or forced; within `only`), for
    the progress display's N of M — from the store's listing, without verifying checksums."""
    n = 0
    for v in variants:
        plan = v.plan
        forced = set(plan.downstream(plan.select(list(force)))) if force else set()
        wanted = set(plan.upstream(plan.select(list(only)))) if only else set(plan.stages)
        n += sum(1 for sid, s in plan.stages.items()
                 if sid in wanted and (sid in forced or not (store.entry_dir(s.key) / "meta.json").exists()))
    return n


def stage_summary(plan: Any, result: Any) -> list[str]:
    """One line per stage kind: how many were computed (in how long), how many reused a stored result
    of inputs identical in content (new keys, not computed), and how many came from the cache."""
    from neuronspec.plan.variants import all_stages

    by_kind: dict[str, list[int | float]] = {}
    for sid, stage in all_stages(plan).items():
        n = by_kind.setdefault(stage.kind, [0, 0, 0, 0.0])
        if sid in result.timings:
            n[0] += 1
            n[3] += result.timings[sid]
        elif sid in result.reused:
            n[1] += 1
        else:
            n[2] += 1
    return [f"{kind:<20} " + ", ".join(([f"{int(c)} computed in {t:.1f} s"] if c else [])
                                       + ([f"{int(r)} reused (inputs identical in content)"] if r else [])
                                       + ([f"{int(k)} cached"] if k else []))
            for kind, (c, r, k, t) in by_kind.items()]


def stage_keys(plan: Any) -> dict[str, str]:
    from neuronspec.plan.variants import all_stages

    return {sid: s.key for sid, s in all_stages(plan).items()}


@dataclass(frozen=True)
class RunMatch:
    """Which past run holds the results of a study as it is now (file, `extends`, `--set`)."""

    folder: Path | None  # the newest run whose stages have this plan's keys; None when no run does
    runs: int  # runs of the study's name in the store
    record: dict[str, Any] | None = None  # the matching run's record, as read
    newest: str | None = None  # the newest of them, when it is not a match
    differences: tuple[str, ...] = ()  # why the newest run is not a match
    unreadable: tuple[str, ...] = ()  # records that could not be read (damaged), with the reason

    def explain(self, study: str, store_root: Path) -> str:
        """Why there is no match, for an error message: the newest run and what differs in it."""
        if not self.runs:
            return f"study {study!r} has no runs in {store_root}"
        if self.newest is None:
            return f"no run of study {study!r} in {store_root} can be read: " + "; ".join(self.unreadable[:3])
        shown = "; ".join(self.differences[:6]) + (f"; … {len(self.differences) - 6} more" if len(self.differences) > 6 else "")
        return (f"none of the {self.runs} runs of study {study!r} in {store_root} was made with the study as it is now; "
                f"the newest, {self.newest}, differs: {shown}")


def setting_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Resolved-study fields that differ between a run's record and the study now, as `path: old → new`."""
    from neuronspec.report.diff import spec_changes

    def short(v: Any) -> str:
        text = json.dumps(v, ensure_ascii=False, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "…"

    return [f"{c.dotted}: {short(c.old)} → {short(c.new)}" for c in spec_changes(recorded, current)]


def matching_run(loaded: Any, plan: Any, store: Any) -> RunMatch:
    """The newest run of this study whose stages have exactly this plan's keys. A run made with
    other settings (`--set`, an edited file, other code or inputs) is never taken in its place,
    however recent: `results()`, `report latest --study` and an unchanged re-run all read this."""
    from neuronspec.report.records import list_runs, read_record

    runs = list_runs(store.root, loaded.study.name)
    keys = stage_keys(plan)
    newest: dict[str, Any] | None = None
    unreadable: list[str] = []
    for entry in runs:
        try:
            record = read_record(store.root / "runs" / entry["run_id"])
        except (OSError, ValueError) as exc:  # a damaged record (RecordError) matches nothing
            unreadable.append(str(exc))
            continue
        if _recorded_keys(record) == keys:
            return RunMatch(store.root / "runs" / entry["run_id"], len(runs), record)
        newest = newest or record
    if newest is None:
        return RunMatch(None, len(runs), unreadable=tuple(unreadable))
    differences = setting_differences(newest.get("study") or {}, loaded.study.model_dump(mode="json"))
    if not differences:  # same settings: the code, a corpus or the model changed the keys
        recorded = _recorded_keys(newest)
        changed = sorted(sid for sid in keys if recorded.get(sid) != keys[sid])
        differences = [f"same settings, but {len(changed)} of {len(keys)} stages have other keys (code, corpus or model "
                       f"changed): {', '.join(changed[:4])}{' …' if len(changed) > 4 else ''}"]
    return RunMatch(None, len(runs), newest=newest.get("run_id"), differences=tuple(differences))


def _recorded_keys(record: dict[str, Any]) -> dict[str, Any]:
    """Stage id → cache key, as a run record lists them."""
    return {sid: s.get("key") for sid, s in (record.get("stages") or {}).items() if isinstance(s, dict)}


def unchanged_run(loaded: Any, plan: Any, store: Any, note: str | None = None) -> Path | None:
    """The run folder to reuse when nothing was computed: the study's matching run, if it also has
    this plan's report settings and formats (and the same note): a fully cached run then reuses its
    report instead of writing and drawing it again."""
    from neuronspec.report.records import report_code

    match = matching_run(loaded, plan, store)
    folder, record = match.folder, match.record
    if folder is None or record is None:
        return None
    same = (record.get("study", {}).get("report") == loaded.study.report.model_dump(mode="json")
            and record.get("report_code") == report_code()
            and record.get("note") == note
            and ("json" not in loaded.study.report.formats or (folder / "results.json").exists())
            and (folder / "report.html").exists())
    return folder if same else None


@dataclass
class RunOutcome:
    run: Any  # neuronspec.plan.runner.RunResult: what was computed, timings
    results: Results  # everything the report shows (results.json)
    tables: list[Table]
    record: dict[str, Any]  # the run record (record.json)
    folder: Path  # the run folder
    reused: bool  # nothing changed: the latest run's folder, nothing written


def run_study(loaded: Any, plan: Any, store: Any, *, started: float | None = None, force: Sequence[str] = (),
              only: Sequence[str] = (), quiet: bool = False, git_info: Any = True, console: Console | None = None,
              note: str | None = None) -> RunOutcome | None:
    """Run a compiled study, collect its results, write the run record and outputs.

    `plan` is a one-model study's Plan or the study's variants (neuronspec.plan.variants: one per model).
    Returns None when a stage failed (already reported on `console`). When nothing was computed
    and a run of this study has the same stages, report settings and `note`, its folder is reused:
    nothing is written, no plot is drawn, and neither torch nor matplotlib is imported. `note` is kept
    in the run record and listed by `neuronspec runs`.
    """
    import os

    from neuronspec.data import CorpusError
    from neuronspec.plan.runner import StageFailed, run_plan
    from neuronspec.plan.variants import as_variants, run_variants
    from neuronspec.report.html import write_html_report
    from neuronspec.plan.store import StoreError
    from neuronspec.report.records import load_results, publish_run, read_record, write_run_record
    from neuronspec.report.render import result_tables, write_outputs
    from neuronspec.report.results import collect_study

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar: ours shows loading
    variants = as_variants(loaded, plan)
    console = console or Console(stderr=True, highlight=False)
    started = time.perf_counter() if started is None else started
    live = not quiet and (console.is_terminal or console.is_jupyter)  # a notebook shows the same display

    def on_variant(v):  # noqa: ANN001, ANN202
        if not quiet:
            console.print(f"[bold]{escape(v.label)}[/bold]")

    try:
        with progress_display(console, live, stages_to_run(variants, store, force, only) if live else 0) as (factory, on_live):
            def on_stage(stage, event):  # noqa: ANN001, ANN202
                if event == "corrupt":
                    console.print(f"[yellow]warning:[/yellow] cached {escape(stage.id)} failed its checksum; recomputing")
                if on_live is not None:
                    on_live(stage, event)

            result = run_variants(variants, lambda v: run_plan(v.plan, store, v.loaded.study, force=list(force), only=list(only),
                                                               progress_factory=factory, on_stage=on_stage), on_variant)
    except StageFailed as failed:
        if isinstance(failed.error, CorpusError):  # the study asked for text that is not there: point at it
            raise StudyError([loaded.source.problem(failed.stage.origin, str(failed.error))]) from None
        console.print(str(failed), style="red", markup=False, soft_wrap=True)
        console.print("finished stages are cached; fix the cause and run again to resume")
        return None
    if not quiet:
        for line in stage_summary(variants, result):
            console.print(f"[green]✓[/green] {escape(line)}", soft_wrap=True)
    previous = None if result.computed or only else unchanged_run(loaded, variants, store, note)
    if previous is not None:
        record = read_record(previous)
        results = load_results(previous, record)
        return RunOutcome(result, results, result_tables(results), record, previous, True)
    results = collect_study(loaded, variants, store)
    tables = result_tables(results)
    staging: Path | None = None
    try:
        record, staging = write_run_record(loaded, variants, store, result, results, time.perf_counter() - started,
                                           git_info=git_info, note=note)
        write_outputs(results, tables, staging, loaded.study.report.formats, loaded.study.report.layer_axis,
                      loaded.study.report.figure_style)
        write_html_report(staging, record, tables)
        folder = publish_run(store.root / "runs", record, staging)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a read-only folder: say so, exit 2
            raise StoreError(f"cannot write the run folder under {store.root / 'runs'}: {exc.strerror or exc}; "
                             "no run was recorded (the computed stages are cached: run again to write it)") from None
        raise
    return RunOutcome(result, results, tables, record, folder, False)


