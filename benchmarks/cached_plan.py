"""What an unchanged study costs to plan: CPU seconds, torch imported or not, fingerprinting's share.

    python benchmarks/cached_plan.py [STUDY]      # default: a tiny study built on the fly

Bar (docs/benchmarks.md, "Bars"): an unchanged study re-runs from cache in < 1 s of CPU without importing
torch. Each measurement runs in a fresh subprocess (`-X importtime` tells whether torch was
imported); the baseline is the same interpreter importing the CLI and doing nothing, measured
in the same run, so the ratio shows what planning itself adds. Code fingerprints are timed
twice: cold (the per-file memo removed: every neuronspec module parsed) and memoised.
Nothing here asserts; it prints PASS / FAIL.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_of(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, bool]:
    """CPU seconds (user + system) of a fresh `python args…`, and whether it imported torch."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    torch = any(line.rstrip().endswith("| torch") for line in done.stderr.splitlines())
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), torch


def tiny_study(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_studies import STUDY, make_corpus

    from neuronspec.models.testing import tiny_tokenizer
    from neuronspec.models.tiny import tiny_model

    tiny_model("llama").save_pretrained(folder / "model")
    tiny_tokenizer().save_pretrained(folder / "model")
    make_corpus(folder / "corpus.jsonl")
    path = folder / "tiny.yaml"
    path.write_text(STUDY.format(model=folder / "model", corpus="corpus.jsonl"))
    return path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("study", nargs="?")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cached-plan-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEURONSPEC_HOME": str(work / "home"), "OMP_NUM_THREADS": "1"}
    study = Path(args.study).resolve() if args.study else tiny_study(work)
    subprocess.run([sys.executable, "-m", "neuronspec.cli", "run", "-q", str(study)], env=env, cwd=work, check=True,
                   capture_output=True)
    baseline, plan, cold, warm = [], [], [], []
    torch_seen = False
    fingerprint = "from neuronspec.plan.kinds import code_fingerprints; code_fingerprints()"
    memo = work / "home" / "fingerprints-v1.json"
    for _ in range(args.repeats):
        baseline.append(cpu_of(["-c", "import neuronspec.cli"], env, work)[0])
        seconds, torch = cpu_of(["-m", "neuronspec.cli", "plan", str(study)], env, work)
        plan.append(seconds)
        torch_seen |= torch
        memo.unlink(missing_ok=True)
        cold.append(cpu_of(["-c", fingerprint], env, work)[0])
        warm.append(cpu_of(["-c", fingerprint], env, work)[0])
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"study: {study}")
    print(f"import neuronspec.cli (baseline)        {med(baseline):6.3f} s CPU")
    print(f"plan, everything cached                 {med(plan):6.3f} s CPU  ({med(plan) / med(baseline):.2f}x baseline)"
          f"  torch imported: {'yes' if torch_seen else 'no'}")
    print(f"code fingerprints of all kinds, cold    {med(cold):6.3f} s CPU  (interpreter start included)")
    print(f"code fingerprints of all kinds, memo    {med(warm):6.3f} s CPU")
    ok = med(plan) < 1.0 and not torch_seen
    print(f"bar: plan of an unchanged study < 1 s CPU without torch: {'PASS' if ok else 'FAIL'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
