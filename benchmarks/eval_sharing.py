"""What evaluation saves by sharing work: the prompt across choices, early layers across arms.

    python benchmarks/eval_sharing.py                          # Gemma 3 270M, 2 threads
    python benchmarks/eval_sharing.py --model tiny-llama       # smoke run, seconds

1. Multiple choice (the MWork next-verse evaluation: builtin bible-next, 4 choices): the old
   path (every prompt + choice through `token_logprobs`, every position unembedded; kept
   here as the baseline) against `multiple_choice` (prompt once, key/value cache, only the
   choice positions unembedded), each as a ratio to perplexity on the same items' texts
   (prompt + correct choice), plus the largest score difference between the two.
2. Prefix reuse (evaluate.prefix): perplexity of a masked arm whose neurons start at layer
   L (MWork's task-solving and generation partitions), computed whole against replaying
   the base model's recorded residual stream at L; the outputs must be bit-identical.

All timings are medians of `--repeats` on the same batches in one process. Nothing asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detect_overhead import load  # noqa: E402  (same model loading as the other benchmarks)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def items(model_name: str, n: int, lang: str) -> list[dict[str, Any]]:
    if model_name.startswith(("tiny-", "random-")):
        import random

        rng = random.Random(0)
        words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "seven"]
        return [{"meta": {"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "\nA:",
                          "choices": [" positive", " negative", " neutral", " ambivalent"], "label": i % 4}}
                for i in range(n)]
    from neuronspec.data import load_corpus

    return [{"meta": dict(d.meta)} for d in load_corpus("builtin:bible-next", [lang], split="eval", docs_per_language=n)[lang]]


def old_choice(model: Any, tokenizer: Any, batch: list[dict[str, Any]], max_tokens: int) -> list[list[float]]:
    """The replaced scoring: each prompt + choice as its own sequence, every position unembedded."""
    from neuronspec.evaluate.choice import split_continuation
    from neuronspec.evaluate.logprobs import pad_token_id, token_logprobs

    seqs, spans = [], []
    for it in batch:
        for choice in it["meta"]["choices"]:
            context, cont = split_continuation(tokenizer, it["meta"]["prompt"], choice)
            ids = (context + cont)[-max_tokens:]
            seqs.append(ids)
            spans.append(min(len(cont), len(ids) - 1))
    lps = token_logprobs(model, seqs, batch_size=8, pad_id=pad_token_id(model, tokenizer))
    flat = [float(lp[-k:].double().sum()) for lp, k in zip(lps, spans)]
    out, i = [], 0
    for it in batch:
        out.append(flat[i : i + len(it["meta"]["choices"])])
        i += len(it["meta"]["choices"])
    return out


def choice_section(args: argparse.Namespace, model: Any, tokenizer: Any) -> None:
    from neuronspec.evaluate import multiple_choice, perplexity

    batch = items(args.model, args.items, args.lang)
    texts = [it["meta"]["prompt"] + it["meta"]["choices"][it["meta"]["label"]] for it in batch]
    with torch.no_grad():
        t_ppl, _ = timed(lambda: perplexity(model, tokenizer, texts, max_tokens=args.max_tokens, bootstrap=0), args.repeats)
        t_old, old = timed(lambda: old_choice(model, tokenizer, batch, args.max_tokens), args.repeats)
        t_new, new = timed(lambda: multiple_choice(model, tokenizer, batch, max_tokens=args.max_tokens, bootstrap=0),
                           args.repeats)
    diff = max(abs(a - b) for row_o, row_n in zip(old, new.scores) for a, b in zip(row_o, row_n))
    same_pred = [max(range(len(r)), key=r.__getitem__) for r in old] == new.predictions
    print(f"multiple choice, {len(batch)} items x {len(batch[0]['meta']['choices'])} choices ({args.lang}):")
    print(f"  perplexity on the same texts  {t_ppl:8.2f} s")
    print(f"  old choice path               {t_old:8.2f} s  = {t_old / t_ppl:5.2f}x perplexity")
    print(f"  shared prompt (new)           {t_new:8.2f} s  = {t_new / t_ppl:5.2f}x perplexity, {t_old / t_new:5.2f}x faster")
    print(f"  largest |score difference| {diff:.2e}, same predictions: {same_pred}")


def prefix_section(args: argparse.Namespace, model: Any, tokenizer: Any) -> None:
    from neuronspec.evaluate.logprobs import encode, pad_token_id, token_logprobs
    from neuronspec.evaluate.prefix import PrefixStore, shared_prefix
    from neuronspec.models.masks import NeuronSet, deactivate
    from neuronspec.models.sites import adapter_for

    dims = adapter_for(model.config).dims(model.config)
    n = dims.num_layers
    if args.model.startswith(("tiny-", "random-")):
        texts = [" ".join(["alpha beta gamma"] * (5 + i % 7)) for i in range(args.docs)]
    else:
        from neuronspec.data import load_corpus

        texts = [d.text for d in load_corpus("builtin:bible-passages", [args.lang], split="eval",
                                             docs_per_language=args.docs)[args.lang]]
    seqs = [encode(tokenizer, t)[: args.ppl_tokens] for t in texts]
    pad = pad_token_id(model, tokenizer)
    store = PrefixStore()
    boundaries = sorted({max(1, round(n * 4 / 18)), max(1, round(n * 14 / 18))})  # MWork's partitions, scaled
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        run = lambda: token_logprobs(model, seqs, batch_size=8, pad_id=pad)  # noqa: E731
        t_base, _ = timed(run, args.repeats)
        with shared_prefix(model, start=n, boundaries=boundaries, store=store):
            run()  # the base evaluation records the boundaries
        print(f"prefix reuse, perplexity of {len(seqs)} docs ({sum(map(len, seqs))} tokens, {args.lang}); "
              f"base model {t_base:.2f} s")
        for start in boundaries:
            arm = NeuronSet({"ffn": {layer: torch.randperm(dims.intermediate, generator=g)[:64] for layer in range(start, n)}})
            with deactivate(model, arm):
                t_full, full = timed(run, args.repeats)
                with shared_prefix(model, start=start, boundaries=boundaries, store=store):
                    t_shared, shared = timed(run, args.repeats)
            same = all(torch.equal(a, b) for a, b in zip(full, shared))
            print(f"  arm from layer {start:>2} of {n}: whole {t_full:6.2f} s, replayed {t_shared:6.2f} s "
                  f"= {t_shared / t_full:5.2f}x (saves {1 - t_shared / t_full:4.0%}), bit-identical: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lang", default="en")
    parser.add_argument("--items", type=int, default=16, help="multiple-choice items")
    parser.add_argument("--max-tokens", type=int, default=256, help="as the mwork next-verse corpus")
    parser.add_argument("--docs", type=int, default=12, help="perplexity documents (as mwork's ppl corpus)")
    parser.add_argument("--ppl-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=["choice", "prefix"], action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, "cpu", args.dtype)
    print(f"{args.model}, {args.threads} threads, median of {args.repeats}")
    if "choice" not in args.skip:
        choice_section(args, model, tokenizer)
    if "prefix" not in args.skip:
        prefix_section(args, model, tokenizer)


if __name__ == "__main__":
    main()
