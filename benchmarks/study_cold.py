"""A whole study run cold, from a fresh store: time and tokens/s per stage kind.

    python benchmarks/study_cold.py studies/mwork.yaml                 # the headline number (long)
    python benchmarks/study_cold.py studies/quickstart.yaml --threads 2
    python benchmarks/study_cold.py studies/mwork.yaml --set corpora.ppl.docs_per_language=4 ...

Runs the study the way `neuronspec run` does (compile, then `run_plan` over every stage,
model loaded lazily once) into a new temporary store (or `--store`, which must not exist),
and prints per stage kind: stages, seconds, real tokens streamed through the model (as the
stages report them to their progress bars), tokens/s and share of the wall time, plus the
model load and the total. The per-stage seconds go to `--json` for comparisons across
commits. Nothing here asserts; the goal (docs/benchmarks.md, "Bars") is mwork < 20 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, as for `neuronspec run`")
    parser.add_argument("--store", type=Path, help="a store path that does not exist yet (default: a temporary one)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the per-stage timings here")
    args = parser.parse_args()

    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from neuronspec.plan.runner import run_plan
    from neuronspec.plan.store import Store
    from neuronspec.plan.variants import compile_variants, run_variants
    from neuronspec.spec.loader import load_study

    if args.store is not None and args.store.exists():
        raise SystemExit(f"{args.store} exists; a cold run needs a fresh store")
    with tempfile.TemporaryDirectory(prefix="neuronspec-cold-") as tmp:
        store = Store(args.store or Path(tmp) / "store")
        loaded = load_study(args.study, args.set)
        variants = compile_variants(loaded)
        streamed: dict[str, int] = defaultdict(int)  # stage id -> real tokens it reported
        current: list[str] = [""]

        @contextmanager
        def progress(description: str, total: int | None):  # noqa: ANN202 - run_plan's progress_factory
            def advance(n: int = 1, tokens: int = 0) -> None:
                streamed[current[0]] += int(tokens)
            yield advance

        def on_stage(stage: Any, event: str) -> None:
            if event == "start":
                current[0] = stage.id

        results = []

        def run_one(v: Any) -> Any:
            results.append(run_plan(v.plan, store, v.loaded.study, progress_factory=progress, on_stage=on_stage))
            return results[-1]

        run_variants(variants, run_one)
    wall = time.perf_counter() - started
    kinds = {sid: st.kind for v in variants for sid, st in v.plan.stages.items()}
    per_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    timings: dict[str, float] = {}
    load = 0.0
    for r in results:
        timings.update(r.timings)
        load += r.model_load_seconds or 0.0
    for sid, seconds in timings.items():
        row = per_kind[kinds[sid]]
        row[0] += 1
        row[1] += seconds
        row[2] += streamed.get(sid, 0)
    print(f"{args.study} cold, {torch.get_num_threads()} threads, {len(timings)} stages computed")
    print(f"{'kind':<14} {'stages':>6} {'seconds':>9} {'tokens':>9} {'tokens/s':>9} {'share':>6}")
    for kind, (n, seconds, toks) in sorted(per_kind.items(), key=lambda kv: -kv[1][1]):
        rate = f"{toks / seconds:9.0f}" if toks and seconds else f"{'-':>9}"
        print(f"{kind:<14} {n:>6} {seconds:9.1f} {toks:>9} {rate} {seconds / wall:6.1%}")
    print(f"model load {load:.1f} s (inside the first model stage); total wall {wall:.1f} s = {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"study": args.study, "set": args.set, "threads": torch.get_num_threads(),
                                         "wall_seconds": wall, "model_load_seconds": load, "timings": timings,
                                         "tokens": dict(streamed)}, indent=1))


if __name__ == "__main__":
    main()
