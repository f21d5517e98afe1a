"""Float32 linear layers on the CPU: torch's default BLAS (MKL) against oneDNN (neuronspec.models.onednn).

    python benchmarks/cpu_linear.py                       # Gemma 3 270M's shapes + its perplexity
    python benchmarks/cpu_linear.py --model tiny-llama --tokens 64 --docs 4   # smoke run, seconds

Part 1 times `F.linear` (MKL) and oneDNN's op on every distinct linear shape of the model
at `--tokens` rows, the unembedding in `--vocab-chunk` slices, alternating the two in
`--repeats` rounds, and prints GFLOP/s and the ratio per shape, with each one's largest error against the
float64 product relative to the largest sum of |terms| (both must be float32-accurate).
Part 2 runs perplexity (`token_logprobs`) on the same random token sequences with the model
as loaded (oneDNN) and with its linears switched back to nn.Linear, alternating, and prints
tokens/s of each, their ratio, and the largest difference of the log-probabilities.
Nothing here asserts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_overhead import load, plain_linears  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn in every round (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def onednn_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's float32 product itself, whatever neuronspec's policy picks for the shape (one-row products go to MKL)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def linear_shapes(model: nn.Module, vocab_chunk: int) -> dict[str, torch.Tensor]:
    """One weight per distinct (out, in) shape, named after a module that has it; the unembedding sliced."""
    shapes: dict[tuple[int, int], tuple[str, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach()
            if weight.shape[0] > 16 * weight.shape[1]:  # the unembedding: a slice of the vocabulary
                weight = weight[:vocab_chunk]
                name += f"[:{vocab_chunk}]"
            shapes.setdefault(tuple(weight.shape), (name, weight))
    return dict(shapes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1280, help="rows of each product (8 documents x 160 tokens)")
    parser.add_argument("--vocab-chunk", type=int, default=32768)
    parser.add_argument("--docs", type=int, default=16, help="perplexity: random documents of --doc-tokens")
    parser.add_argument("--doc-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from neuronspec.evaluate.logprobs import token_logprobs
    from neuronspec.models import onednn

    model, _ = load(args.model, "cpu")
    print(f"{args.model}, {args.threads} threads, torch {torch.__version__}, oneDNN used: {onednn.available()}")
    if not onednn.available():
        print("oneDNN is not used on this machine (NEURONSPEC_ONEDNN=0, not x86, or torch without oneDNN): nothing to compare")
        return

    print(f"\n1. one product per linear shape, {args.tokens} rows (median of {args.repeats})")
    print(f"{'module':44s} {'shape':>14s} {'MKL GF/s':>9s} {'oneDNN GF/s':>11s} {'ratio':>6s} {'MKL err':>8s} {'oneDNN err':>10s}")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in linear_shapes(model, args.vocab_chunk).items():
            x = torch.randn(args.tokens, weight.shape[1], generator=gen)
            t = alternate({"mkl": lambda: nn.functional.linear(x, weight), "onednn": lambda: onednn_product(x, weight)},
                          args.repeats)
            exact = x.double() @ weight.double().T
            scale = (x.double().abs() @ weight.double().abs().T).max().item()
            # error against the float64 product, relative to the largest sum of |terms|
            err = {name: (fn(x, weight) - exact).abs().max().item() / scale
                   for name, fn in (("mkl", nn.functional.linear), ("onednn", onednn_product))}
            flops = 2 * args.tokens * weight.numel()
            print(f"{name[-44:]:44s} {str(tuple(weight.shape)):>14s} {flops / t['mkl'] / 1e9:9.0f} "
                  f"{flops / t['onednn'] / 1e9:11.0f} {t['mkl'] / t['onednn']:5.2f}x {err['mkl']:8.1e} {err['onednn']:10.1e}")

    print(f"\n2. perplexity, {args.docs} random documents of {args.doc_tokens} tokens, batch 8 (median of {args.repeats})")
    rng = random.Random(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    seqs = [[rng.randrange(vocab) for _ in range(args.doc_tokens)] for _ in range(args.docs)]
    results: dict[str, list[torch.Tensor]] = {}

    def run(backend: str) -> None:
        with plain_linears(model) if backend == "MKL" else nullcontext():
            results[backend] = token_logprobs(model, seqs, batch_size=8)

    t = alternate({"MKL": lambda: run("MKL"), "oneDNN": lambda: run("oneDNN")}, args.repeats)
    tokens = sum(len(s) - 1 for s in seqs)
    diff = max((a - b).abs().max().item() for a, b in zip(results["MKL"], results["oneDNN"]))
    for backend, seconds in t.items():
        print(f"{backend:7s} {tokens / seconds:8.0f} tokens/s")
    print(f"oneDNN ÷ MKL throughput {t['MKL'] / t['oneDNN']:.2f}x; largest |Δ log p| {diff:.1e}")


if __name__ == "__main__":
    main()
