"""Every stage kind on a GPU, then the per-site PLND overheads: one command, pass / fail per kind.

    python benchmarks/gpu_check.py                       # cuda, bfloat16, a random Gemma-3-shaped model
    python benchmarks/gpu_check.py --device cpu --dtype float32 --skip-ratios   # the same study on CPU

A small study with every stage kind — PLND on all five sites, LAPE, LinguaFranca, Sharing with
Integrated-Gradients attribution, the logit lens, a deactivation arm and its random control, an
enhance arm, and the perplexity, multiple-choice and generation evaluators — runs on a
random-weight model built from a config (no download: the GPU machine may be offline) with the
character tokenizer, over synthetic three-"language" corpora. Each kind is run on its own
(`run_plan(only=...)` in dependency order), so one failing kind does not hide the others;
a failure prints its exception. Then `detect_overhead.py` prints the per-site ratios for the
random Llama presets (``--ratio-models``, ``--ratio-tokens``).

Exit status: 0 when every stage kind passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

STUDY = """\
name: gpu-check
model: {{id: {model}, dtype: {dtype}, device: {device}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 48, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 48, eval_fraction: 0.4}}
  parallel: {{source: {parallel}, docs_per_language: 8, max_tokens: 48}}
  choice: {{source: {choice}, max_tokens: 48}}
  gen: {{source: {gen}, max_tokens: 48}}
detect:
  plnd: {{sites: [all], epsilon: {{quantile: 0.9}}, batch_size: 4}}
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
  sharing: {{corpus: parallel, thresholds: [0.0], attribution: {{method: ig, steps: 8, probes: 4, docs: 1, layers: [0]}}}}
analyses:
  logit_lens: {{corpus: parallel}}
neurons:
  specific: plnd[lang] - plnd[others]
partitions: {{early: [0, 1], late: [1, 2]}}
arms:
  - {{name: early, deactivate: {{neurons: specific, layers: early}}}}
  - {{name: early-random, deactivate: {{random_like: early}}}}
  - {{name: tune, enhance: {{neurons: specific, corpus: detect, docs: 4, languages: [fr], lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 10}}
  choice: {{metric: choice, corpus: choice, arms: [early], bootstrap: 10}}
  gen: {{metric: generation, corpus: gen, arms: [early], options: {{max_new_tokens: 4}}}}
"""


def _task_files(folder: Path) -> tuple[Path, Path]:
    """Multiple-choice and generation items in each language (prompt / choices / label, prompt / reference)."""
    from tiny_studies import ALPHABETS

    rng = random.Random(0)
    choice, gen = folder / "choice.jsonl", folder / "gen.jsonl"
    with choice.open("w") as c, gen.open("w") as g:
        for lang, letters in ALPHABETS.items():
            for i in range(4):
                word = lambda n: "".join(rng.choice(letters[:-1]) for _ in range(n))  # noqa: E731
                meta = {"prompt": word(12), "choices": [" " + word(3), " " + word(3)], "label": i % 2}
                c.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": meta["prompt"], "meta": meta}) + "\n")
                meta = {"prompt": word(12), "reference": word(6)}
                g.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": meta["prompt"], "meta": meta}) + "\n")
    return choice, gen


def _model_folder(folder: Path) -> Path:
    """A random Gemma-3-shaped model (sliding windows, q/k norms, GQA) saved with the character tokenizer."""
    from neuronspec.models.testing import tiny_tokenizer
    from neuronspec.models.tiny import tiny_model

    out = folder / "model"
    tiny_model("gemma3_text", num_attention_heads=4, num_key_value_heads=1, head_dim=16,
               query_pre_attn_scalar=32).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def check_stage_kinds(device: str, dtype: str) -> dict[str, str]:
    """kind → "PASS" or the error of its first failing stage."""
    from tiny_studies import make_corpus, make_parallel_corpus

    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.runner import run_plan
    from neuronspec.plan.store import Store
    from neuronspec.spec import load_study

    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        choice, gen = _task_files(folder)
        path = folder / "study.yaml"
        path.write_text(STUDY.format(model=_model_folder(folder), dtype=dtype, device=device,
                                     corpus=make_corpus(folder / "corpus.jsonl"),
                                     parallel=make_parallel_corpus(folder / "parallel.jsonl"), choice=choice, gen=gen))
        import os

        os.environ["NEURONSPEC_HOME"] = str(folder / "home")
        loaded = load_study(path)
        plan = compile_study(loaded)
        store = Store(folder / ".neuronspec")
        kinds = list(dict.fromkeys(stage.kind for stage in plan.stages.values()))  # dependency order
        for kind in kinds:
            ids = [sid for sid, stage in plan.stages.items() if stage.kind == kind]
            try:
                run_plan(plan, store, loaded.study, only=ids)
                results[kind] = "PASS"
            except Exception as err:  # noqa: BLE001 - report every kind, then fail
                results[kind] = f"FAIL {type(err).__name__}: {err}"
                traceback.print_exc()
            print(f"{results[kind][:4]}  {kind} ({len(ids)} stages)", flush=True)
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
