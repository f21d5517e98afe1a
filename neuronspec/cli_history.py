"""`neuronspec runs`, `diff` and `report`: the commands that read past runs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from neuronspec.spec import StudyError

from neuronspec.cli_common import _esc, _fail, _load, _print_tables, _run_study, _store, console, err


# -- runs -------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    from neuronspec.report.records import list_runs, read_record
    from neuronspec.report.tables import Table
    from neuronspec.session import setting_differences

    path = Path(args.study) if args.study else None
    loaded = _load(args, args.study) if args.study else None
    name = loaded.study.name if loaded else None
    store = _store(args, path)
    runs = list_runs(store.root, name)[: args.limit or None]
    if loaded is not None:  # what each run's settings differ in from the study file as it is now
        current = loaded.study.model_dump(mode="json")
        for r in runs:
            try:
                r["differs"] = setting_differences(read_record(store.root / "runs" / r["run_id"]).get("study") or {}, current)
            except ValueError:
                r["differs"] = None
    if args.json:
        print(json.dumps(runs, indent=1, ensure_ascii=False))
        return 0
    if not runs:
        console.print(_esc(f"no runs in {store.root / 'runs'}" + (f" for study {name!r}" if name else "")))
        return 0
    columns = ["run", "study", "date", "computed", "cached", "duration", "commit", "--set", "note"]
    t = Table(f"runs in {store.root} (newest first)", columns + (["differs from the file"] if loaded else []))
    for r in runs:
        commit = (r["commit"] or "")[:10] + ("*" if r.get("dirty") else "") if r.get("commit") else "–"
        row = [r["run_id"], r["study"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("created") or 0)),
               r["computed"], r["cached"], f"{r.get('seconds') or 0:.1f} s", commit,
               " ".join(r.get("overrides") or []) or "–", r.get("note") or "–"]
        if loaded:
            differs = r.get("differs")
            row.append("(record unreadable)" if differs is None else "; ".join(differs[:3])
                       + (f"; … {len(differs) - 3} more" if len(differs) > 3 else "") if differs else "–")
        t.add(*row)
    t.caption = "commit*: the study file had uncommitted changes" + (
        "; differs: settings of the run that are not the study's as it is now (–: none)" if loaded else "")
    _print_tables([t])
    return 0


# -- diff -------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    from neuronspec.paths import study_store
    from neuronspec.plan.variants import compile_variants
    from neuronspec.report import diff as D

    if args.rev and len(args.refs) != 1:
        err.print("[red]--rev REV compares one study file with its version at REV: give exactly one FILE[/red]")
        return 2
    if not args.rev and len(args.refs) != 2:
        err.print("[red]diff needs two sides: A B (study files, REV:path, run ids), or --rev REV FILE[/red]")
        return 2
    if args.study and "latest" in args.refs:  # the newest run of the study as it is now
        folder = _matching_run(args)
        if folder is None:
            return 2
        args.refs = [str(folder) if r == "latest" else r for r in args.refs]
    studies = [Path(args.study)] if args.study else []
    stores = [study_store(p, args.store) for p in studies + [Path(r) for r in args.refs if Path(r).is_file()]] + [
        study_store(None, args.store)]
    makers = ([lambda: D.rev_side(args.rev, args.refs[0], args.store)] if args.rev else []) + [
        (lambda r=r: D.resolve_side(r, stores=stores, store=args.store)) for r in args.refs]
    sides, problems = [], []
    for make in makers:  # validate both sides, so every error is reported at once
        try:
            sides.append(make())
        except StudyError as exc:
            problems += exc.problems
        except D.DiffError as exc:
            _fail(exc)
            return 2
    if problems:
        raise StudyError(problems)
    a, b = sides
    if args.run:
        for side in (a, b):
            if side.loaded is not None and side.missing():
                err.print(_esc(f"running {side.label} ({len(side.missing())} stages)"))
                done = _run_study(side.loaded, compile_variants(side.loaded), side.store, started=time.perf_counter(),
                                  quiet=args.quiet, git_info=side.git_info if side.kind == "rev" else True)
                if done is None:
                    return 1
                side._results.clear()
    d = D.diff_sides(a, b, show_all=args.all)
    if args.json:
        print(json.dumps(d.model_dump(mode="json"), indent=1, ensure_ascii=False))
        return 0
    tables = D.diff_tables(d, a, b)
    lines = D.messages(d, a, b)
    if args.md:
        print(f"## diff: {a.label} → {b.label}\n")
        if d.identical:
            print("no differences\n")
        print("\n".join(t.to_markdown() for t in tables))
        for line in lines:
            print(f"> {line}\n")
        return 0
    if d.identical:
        console.print(_esc(f"no differences between {a.label} and {b.label}"))
    _print_tables(tables)
    for line in lines:
        console.print(f"[yellow]note:[/yellow] {_esc(line)}", soft_wrap=True)
    return 0


# -- report -----------------------------------------------------------------------------
def _matching_run(args: argparse.Namespace) -> Path | None:
    """`latest` for `--study FILE [--set …]`: the newest run made with the study as it is now —
    never a run of other settings, however recent (None, with the reason printed, if none is)."""
    from neuronspec.plan.variants import compile_variants
    from neuronspec.session import matching_run

    loaded = _load(args, args.study)
    store = _store(args, loaded.path)
    match = matching_run(loaded, compile_variants(loaded), store)
    if match.folder is None:
        _fail(match.explain(loaded.study.name, store.root) + f" (run it: neuronspec run {args.study})")
    return match.folder


def cmd_report(args: argparse.Namespace) -> int:
    from neuronspec.paths import study_store
    from neuronspec.report.html import run_summary, write_html_report
    from neuronspec.report.records import find_run, load_results, read_record
    from neuronspec.report.render import result_tables

    if args.run == "latest" and args.study:
        folder = _matching_run(args)
        if folder is None:
            return 2
    else:
        stores = [study_store(Path(args.study) if args.study else None, args.store)]
        try:
            folder = find_run(args.run, stores)
        except ValueError as exc:
            _fail(exc)
            return 2
        if folder is None:
            _fail(f"no run {args.run!r} in {stores[0] / 'runs'} (see `neuronspec runs`)")
            return 2
    record = read_record(folder)
    tables = result_tables(load_results(folder, record))
    path = write_html_report(folder, record, tables)
    if not args.quiet:
        _print_tables([run_summary(record), *(t for t in tables if t.terminal)])
    console.print(f"wrote {_esc(path)}", soft_wrap=True)
    return 0
