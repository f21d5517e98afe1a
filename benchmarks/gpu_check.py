"""Every stage kind on a GPU, then the per-site PLND overheads: one command, pass / fail per kind.

    python benchmarks/gpu_check.py                       # cuda, bfloat16, a random Gemma-3-shaped model
    python benchmarks/gpu_check.py --device cpu --dtype float32 --skip-ratios   # the same study on CPU

A small study with every stage kind — PLND on all five sites, LAPE, LinguaFranca, Sharing with
Integrated-Gradients attribution, the logit lens, a deactivation arm and its random control, a
mean-ablation arm, an enhance arm, the perplexity, multiple-choice and generation evaluators and an lm-eval task
(tests/tiny_studies.py `EVERY_KIND`; tests/plan/test_stage_devices.py runs it on a pretend
CUDA device on machines without one) — runs on a random-weight model built from a config (no
download: the GPU machine may be offline) with the character tokenizer, over synthetic three-"language" corpora. Each kind is run on its own
(`run_plan(only=...)` in dependency order), so one failing kind does not hide the others;
a failure prints its exception. Then `detect_overhead.py` prints the per-site ratios for the
random Llama presets (``--ratio-models``, ``--ratio-tokens``).

Exit status: 0 when every stage kind passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def check_stage_kinds(device: str, dtype: str) -> dict[str, str]:
    """kind → "PASS" or the error of its first failing stage (tests/tiny_studies.py: the study)."""
    import importlib.util
    import os

    from tiny_studies import run_each_kind, write_every_kind_study

    results: dict[str, str] = {}
    lm_eval = importlib.util.find_spec("lm_eval") is not None
    if not lm_eval:
        print("lm-eval is not installed: the eval.lm_eval kind is left out (pip install 'neuronspec[tasks]')")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["NEURONSPEC_HOME"] = str(folder / "home")
        path = write_every_kind_study(folder, device=device, dtype=dtype, lm_eval=lm_eval)
        for run in run_each_kind(path, folder / ".neuronspec"):
            if run.error is None:
                results[run.kind] = "PASS"
            else:
                results[run.kind] = f"FAIL {type(run.error).__name__}: {run.error} ({run.where()})"
                traceback.print_exception(run.error)
            print(f"{results[run.kind][:4]}  {run.kind} ({len(run.stages)} stages)", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--skip-ratios", action="store_true")
    p.add_argument("--ratio-models", default="random-llama-1b")
    p.add_argument("--ratio-tokens", default="512")
    p.add_argument("--ratio-docs", type=int, default=64)
    p.add_argument("--ratio-batch", type=int, default=16)
    args = p.parse_args()

    results = check_stage_kinds(args.device, args.dtype)
    print("\nstage kinds on", args.device, args.dtype)
    for kind, verdict in results.items():
        print(f"  {kind:<22} {verdict}")
    ok = all(v == "PASS" for v in results.values())
    if not args.skip_ratios:
        cmd = [sys.executable, str(HERE / "detect_overhead.py"), "--model", args.ratio_models, "--max-tokens",
               args.ratio_tokens, "--dtype", args.dtype, "--device", args.device, "--docs", str(args.ratio_docs),
               "--batch-size", str(args.ratio_batch), "--repeats", "3"]
        print("\n" + " ".join(cmd), flush=True)
        ok &= subprocess.run(cmd, check=False).returncode == 0
    print("\nALL STAGE KINDS PASS" if all(v == "PASS" for v in results.values()) else "\nSOME STAGE KINDS FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
