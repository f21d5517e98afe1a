"""CPU time of a fully cached `neuronspec run`, against starting Python and importing the CLI.

    python benchmarks/cached_rerun.py                       # a tiny study (built and run once first)
    python benchmarks/cached_rerun.py --study studies/quickstart.yaml   # run it once before

Each measurement is a fresh process (user + system CPU of the child, median of --repeats);
the baselines are measured in the same run on the same machine: `python -c pass` and
`python -c "import neuronspec.cli"`. The bar: a cached run costs < 1 s of CPU and imports
neither torch nor matplotlib (printed from the run's own `sys.modules`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import json, sys\nfrom neuronspec.cli import main\nrc = main(['run', '-q', sys.argv[1]])\n"
         "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'transformers', 'matplotlib', 'pandas') "
         "if m in sys.modules)}))")


def cpu_seconds(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """User + system CPU seconds of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def tiny_study(folder: Path) -> Path:
    """The tests' tiny study (3-layer Llama, three made-up languages) with its model and corpus."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_studies import STUDY, make_corpus

    from neuronspec.models.testing import tiny_tokenizer
    from neuronspec.models.tiny import tiny_model

    model = folder / "model"
    tiny_model("llama").save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    path = folder / "tiny.yaml"
    path.write_text(STUDY.format(model=model, corpus=make_corpus(folder / "corpus.jsonl")))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", help="a study that has already run (default: a tiny one, run here first)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            study = Path(args.study).resolve()
        else:
            env["NEURONSPEC_HOME"] = str(Path(tmp) / "home")
            study = tiny_study(Path(tmp))
            subprocess.run([sys.executable, "-m", "neuronspec.cli", "run", "-q", str(study)], env=env, check=True,
                           capture_output=True)
        rows = {}
        for name, cmd in (("python -c pass", [sys.executable, "-c", "pass"]),
                          ("import neuronspec.cli", [sys.executable, "-c", "import neuronspec.cli"]),
                          ("cached run -q", [sys.executable, "-c", PROBE, str(study)])):
            times, out = [], ""
            for _ in range(args.repeats):
                t, out = cpu_seconds(cmd, env)
                times.append(t)
            rows[name] = (statistics.median(times), out)
    probe = json.loads(rows["cached run -q"][1].strip().splitlines()[-1])
    base = rows["python -c pass"][0]
    print(f"study: {study.name}; median of {args.repeats} fresh processes, CPU seconds (user + system)")
    for name, (t, _) in rows.items():
        print(f"  {name:<24} {t:6.3f} s   {t / base:5.1f}× python -c pass")
    print(f"cached run: exit {probe['rc']}, heavy modules imported: {probe['heavy'] or 'none'}; "
          f"bar < 1 s CPU: {'met' if rows['cached run -q'][0] < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
