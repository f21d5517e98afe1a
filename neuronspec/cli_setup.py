"""`neuronspec init`, `schema`, `cache`, `models`, `corpora` and `export`: the commands around a
study — its files, its store, the models and corpora it can name, and the models it can write."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from neuronspec.fileio import write_text
from neuronspec.spec import load_study

from neuronspec.cli_common import _compile, _esc, _fail, _load, _store, console


# -- init -------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from neuronspec.spec.starter import schema_modeline, starter_study

    from neuronspec.spec.models import NAME_MAX, NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, args.name) or len(args.name) > NAME_MAX:
        _fail(f"study name {args.name!r}: letters, digits, '_', '.', '-' (not first), at most {NAME_MAX} characters")
        return 2
    out = Path(args.out) if args.out else Path("studies") / f"{args.name}.yaml"
    if out.exists() and not args.force:
        _fail(f"{out} exists; pass --force to overwrite it")
        return 2
    schema = schema_modeline(out)
    try:
        text = starter_study(args.name, file=str(out), schema=schema)
    except ValueError as exc:
        _fail(exc)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    load_study(out)  # the starter must validate as written
    console.print(_esc(f"wrote {out}; next: neuronspec plan {out}"))
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
    if arm.deactivate is not None and arm.deactivate.ablation == "mean":
        _fail(f"{args.file}: arm {args.arm!r} writes in its neurons' means over {arm.deactivate.mean_corpus!r}: that "
              "needs hooks at run time, it has no form as weights to export (arms with ablation: zero do)")
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
