"""Activation statistics with padded batches against packed ones (no compute on padding).

    python benchmarks/packing.py                      # Gemma 3 270M, 4 languages x 32 Bible verses
    python benchmarks/packing.py --model tiny-llama   # smoke run

The passes of the `stats/act` stages (one per language; ffn mean pooling, LAPE counts at
τ = 0, gate counts) over the same documents: length-sorted right-padded batches (`iter_batches`) against packed rows
(`iter_packed`: first-fit decreasing into rows as wide as the longest document, positions
restarting, attention kept inside each document), run alternately so that load on a shared
machine hits both alike. Prints the positions each computes, median seconds, the ratio,
and the largest difference of the pooled statistics.
Nothing asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detect_overhead import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--languages", default="en,zh,fr,hi")
    parser.add_argument("--docs", type=int, default=32, help="per language")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from neuronspec.methods.activations import activation_statistics
    from neuronspec.models.forward import can_pack, encode, iter_batches, iter_packed

    model, tokenizer = load(args.model, "cpu")
    if not can_pack(model):
        raise SystemExit(f"{args.model} cannot be packed (its forward takes no position_ids)")
    langs = args.languages.split(",")
    if args.model.startswith(("tiny-", "random-")):
        g = torch.Generator().manual_seed(0)
        per_lang = [[[1] + torch.randint(4, 96, (int(n),), generator=g).tolist()
                     for n in torch.randint(5, args.max_tokens, (args.docs,), generator=g)] for _ in langs]
    else:
        from neuronspec.data import load_corpus

        docs = load_corpus("builtin:bible", langs, split="detect", docs_per_language=args.docs)
        per_lang = [encode(tokenizer, [d.text for d in docs[lang]], args.max_tokens) for lang in langs]
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    makers = {"padded": lambda e: iter_batches(e, batch_size=args.batch_size, pad_id=pad),
              "packed": lambda e: iter_packed(e, batch_size=args.batch_size, pad_id=pad)}
    real = sum(len(e) for enc in per_lang for e in enc)
    print(f"{args.model}, {len(langs)} languages x {args.docs} documents ({real} tokens), batch {args.batch_size}, "
          f"{args.threads} threads, median of {args.repeats}")
    runs: dict[str, list[float]] = {name: [] for name in makers}
    results = {}

    def stage_passes(make):  # noqa: ANN001, ANN202 - one pass per language, as the stages run
        return [activation_statistics(model, make(enc), poolings=("mean",), thresholds=(0.0,), gate_counts=True,
                                      n_samples=len(enc)) for enc in per_lang]

    with torch.no_grad():
        for _ in range(args.repeats):
            for name, make in makers.items():
                start = time.perf_counter()
                results[name] = stage_passes(make)
                runs[name].append(time.perf_counter() - start)
    times = {name: statistics.median(r) for name, r in runs.items()}
    for name, make in makers.items():
        positions = sum(b.input_ids.numel() for enc in per_lang for b in make(enc))
        print(f"  {name:<6} {positions:>7} positions ({positions / real - 1:5.1%} padding)  {times[name]:7.2f} s  "
              f"{real / times[name]:7.0f} tokens/s")
    diff = max(float((a.pooled["mean"] - b.pooled["mean"]).abs().max()) for a, b in zip(results["packed"], results["padded"]))
    print(f"  packed / padded time {times['packed'] / times['padded']:.3f}; largest pooled difference {diff:.2e}")


if __name__ == "__main__":
    main()
