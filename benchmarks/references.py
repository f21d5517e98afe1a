"""neuronspec's detection passes against ports of the three reference implementations (CPU, 1 thread).

    python benchmarks/references.py                                  # Gemma 3 270M, 4 languages x 32 Bible verses
    python benchmarks/references.py --model random-llama-small --repeats 1   # smoke run, seconds

Each reference's statistics loop is ported to plain transformers on CPU, and timed against
the call the corresponding neuronspec stage makes, on the same encoded documents
(`forward.encode`, BOS included, truncated to --max-tokens). Reference and neuronspec run
alternately, --repeats rounds, median seconds; nothing asserts.

* LAPE — `RUCAIBox/Language-Specific-Neurons`, activation.py. Per language the token
  stream is concatenated (here: the documents' encodings end to end), cut into rows of a
  fixed length (the model's max_model_len there; --lape-row here) and the tail that does not
  fill a row is dropped; every MLP's forward is replaced by one that computes
  act_fn(gate·x), adds its sum, sum of squares, cubes and fourth powers and the count of
  values > 0 over every position, and goes on to down(act·up). vLLM's
  `generate(max_tokens=1)` becomes the decoder forward plus the unembedding of each row's last
  position (what a vLLM prefill computes); rows are fed --batch-size at a time.
  neuronspec: `activation_statistics(..., poolings=(), thresholds=(), gate_counts=True)`
  over packed batches (`iter_packed`), as `stats/act` runs for LAPE (event: gate).
  Compared: both count act(gate·x) > 0 per position. The reference's rows cross document
  boundaries (a document's tokens also see the previous ones), so its counts differ from
  per-document counts by context; to check the event itself, the reference's patched MLP is
  also run on one document per row (no concatenation) and its counts compared with
  neuronspec's gate counts with the first token kept (`skip_first=False`).
* LinguaFranca — `X-LANCE/LinguaFranca`, run.py (`generate_hidden_states_llama` and
  `SaveActivationHookLlama`). Batch 1, `model.generate(max_new_tokens=1)` per document, a
  forward hook on every down projection that sums its input over the tokens of row 0 and
  moves it to the CPU; the layers' sums are concatenated per document (the hook divides by
  the generate calls, 1, so the vector is a sum over tokens, not a mean — the same direction
  after the L2 normalisation that follows). Pre-tokenised input (the reference's
  `tokenize=False` path), so both see the same tokens. neuronspec: `activation_statistics(...,
  poolings=("mean",), thresholds=())` over packed batches, as `stats/act` runs for
  LinguaFranca. Compared: the reference's sum ÷ tokens against neuronspec's mean with the first
  token kept (max abs difference).
* PLND — `DAMO-NLP-SG/multilingual_analysis` as docs/methods.md (PLND, where neuronspec differs)
  describes it (not in the searchable index; the hook-based reimplementation of its `Prompting` loop that is was read
  instead): batch 1, `generate(max_new_tokens=1)` per document, FFN score Σ_t |up(x)_t,k| per
  layer taken to a Python list, per-document top-k per layer by `np.argsort`, and the set
  intersection over documents per layer at the end. k is the reference's 2,000 of 11,008
  (Llama-2-7B) scaled to the model's width. Left out (they would only slow the reference): the
  duplicate "fwd_down" copy of the same score, the early-exit decoding of every layer's
  hidden states through the unembedding, and the q/k/v/o scores. neuronspec: `plnd_statistics(...,
  ["ffn"], token_reduce="mean", top_k=...)` over packed batches (`iter_packed`), as the
  `stats/plnd` stage runs for the ffn site under rule topk_intersect. Only `ffn` is compared:
  the reference's q/k score materialises [B, H, d, T, T] and recomputes the whole attention in
  a per-architecture hook (Gemma's q/k norm, softcapping, sliding window), which a faithful CPU
  port would have to re-derive; neuronspec's own q/k cost is measured by
  benchmarks/detect_overhead.py. The two FFN scores are different quantities (Σ|up| against
  Σ a²·‖W_down[:,k]‖²), so only the agreement of the selected sets (Jaccard per layer) is printed.

Printed per method: positions computed (padding included), the real tokens among them (the
LAPE reference's dropped tail is never computed), seconds, tokens/s of those real tokens,
neuronspec ÷ reference time and the throughput ratio, and the comparison above.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detect_overhead import load, plain_linears  # noqa: E402

#: the PLND reference's per-document FFN top-k (2,000 of Llama-2-7B's 11,008 neurons per layer)
PLND_TOPK_FRACTION = 2000 / 11008


@dataclass
class Timed:
    """One side of a comparison: its median seconds, positions computed (padding included) and
    real tokens among them (what tokens/s counts: the LAPE reference's dropped tail is not computed)."""

    name: str
    seconds: float
    positions: int
    tokens: int

    def line(self) -> str:
        return (f"    {self.name:<11} {self.positions:>7} positions  {self.tokens:>7} real tokens  "
                f"{self.seconds:7.2f} s  {self.tokens / self.seconds:7.0f} tokens/s")


def _layers(model: nn.Module) -> tuple[Any, int, int]:
    """The model's site adapter, number of layers and FFN width (what every reference port sizes itself by)."""
    from neuronspec.models.sites import adapter_for

    adapter = adapter_for(model.config)
    dims = adapter.dims(model.config)
    return adapter, dims.num_layers, dims.intermediate


def _mlp(model: nn.Module, i: int) -> nn.Module:
    from neuronspec.models.sites import adapter_for

    mlp = adapter_for(model.config).layers(model)[i].mlp
    for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
        if not hasattr(mlp, name):
            raise SystemExit(f"the reference ports need a gated MLP (gate_proj/up_proj/down_proj/act_fn); layer {i} has none of {name}")
    return mlp


# ---- LAPE (RUCAIBox/Language-Specific-Neurons, activation.py) ---------------------------------
@dataclass
class LapeCounts:
    n: int  # positions counted (the reference's `n`)
    over_zero: Tensor  # [L, I] int32
    moments: Tensor  # [4, L, I] float32: sums of act, act², act³, act⁴


class LapeReference:
    """The reference's replaced MLP forward: act = act_fn(gate·x), moments and > 0 counts over
    every position, then down(act·up)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter, self.L, self.I = _layers(model)
        self.reset()

    def reset(self) -> None:
        self.moments = torch.zeros(4, self.L, self.I)
        self.over_zero = torch.zeros(self.L, self.I, dtype=torch.int32)

    def _forward(self, idx: int) -> Callable[[nn.Module, Tensor], Tensor]:
        moments, over_zero = self.moments, self.over_zero

        def forward(mlp: nn.Module, x: Tensor) -> Tensor:
            act = mlp.act_fn(mlp.gate_proj(x))
            activation = act.float()
            moments[0, idx] += activation.sum(dim=(0, 1))
            moments[1, idx] += activation.pow(2).sum(dim=(0, 1))
            moments[2, idx] += activation.pow(3).sum(dim=(0, 1))
            moments[3, idx] += activation.pow(4).sum(dim=(0, 1))
            over_zero[idx] += (activation > 0).sum(dim=(0, 1)).int()
            return mlp.down_proj(act * mlp.up_proj(x))
        return forward

    def run(self, rows: Tensor, batch_size: int) -> LapeCounts:
        """Count over `rows` [R, T] (every position), `batch_size` rows per forward."""
        self.reset()
        mlps = [_mlp(self.model, i) for i in range(self.L)]
        for i, mlp in enumerate(mlps):
            mlp.forward = MethodType(self._forward(i), mlp)
        try:
            base, unembed = self.adapter.base(self.model), self.adapter.unembed(self.model)
            for start in range(0, rows.shape[0], batch_size):
                ids = rows[start:start + batch_size]
                hidden = base(input_ids=ids, use_cache=False).last_hidden_state
                unembed(hidden[:, -1])  # vLLM's prefill unembeds the last position only
        finally:
            for mlp in mlps:
                del mlp.forward  # back to the class's forward
        return LapeCounts(rows.numel(), self.over_zero.clone(), self.moments.clone())


def lape_rows(encodings: Sequence[Sequence[int]], row: int) -> tuple[Tensor, int]:
    """The reference's input: the token stream cut into rows of `row` tokens, tail dropped; and the tail's size."""
    stream = [t for e in encodings for t in e]
    kept = len(stream) // row * row
    return torch.tensor(stream[:kept], dtype=torch.int64).view(-1, row), len(stream) - kept


# ---- LinguaFranca (X-LANCE/LinguaFranca, run.py) ----------------------------------------------
class LinguaFrancaReference:
    """One hook on every down projection: the sum over tokens of row 0 of its input, on the CPU;
    when every layer has reported, the running vector is (vector·calls + sums) / (calls + batch)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter, self.L, self.I = _layers(model)
        self.initialize()

    def initialize(self) -> None:
        self.results: list[Tensor] = []
        self.calls = 0
        self.final = torch.zeros(self.I * self.L)

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.results.append(inputs[0][0].sum(dim=0).detach().to("cpu"))
        if len(self.results) >= self.L:
            self.final = (self.final * self.calls + torch.cat(self.results, dim=0)) / (self.calls + len(inputs[0]))
            self.calls += len(inputs[0])
            self.results = []

    def run(self, encodings: Sequence[Sequence[int]], pad_id: int) -> list[Tensor]:
        handles = [self.adapter.ffn_down(self.model, i).register_forward_hook(self) for i in range(self.L)]
        outputs = []
        try:
            for ids in encodings:
                self.model.generate(inputs=torch.tensor([ids]), max_new_tokens=1, pad_token_id=pad_id, do_sample=False)
                outputs.append(self.final)
                self.initialize()
        finally:
            for h in handles:
                h.remove()
        return outputs


# ---- PLND (DAMO-NLP-SG/multilingual_analysis, as docs/methods.md describes it) ---------------
class PlndReference:
    """Batch 1, generate(max_new_tokens=1); FFN score Σ_t |up(x)| per layer as a Python list;
    per-document top-k per layer by np.argsort; set intersection over documents per layer."""

    def __init__(self, model: nn.Module, k: int) -> None:
        self.model, self.k = model, k
        self.adapter, self.L, _ = _layers(model)
        self.scores: dict[int, list[float]] = {}

    def _hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.scores[layer] = torch.sum(torch.abs(output), dim=1).squeeze().tolist()
        return hook

    def run(self, encodings: Sequence[Sequence[int]], pad_id: int) -> dict[int, set[int]]:
        handles = [_mlp(self.model, i).up_proj.register_forward_hook(self._hook(i)) for i in range(self.L)]
        per_doc: list[dict[int, np.ndarray]] = []
        try:
            for ids in encodings:
                self.scores = {}
                self.model.generate(inputs=torch.tensor([ids]), max_new_tokens=1, pad_token_id=pad_id, do_sample=False)
                per_doc.append({i: np.argsort(self.scores[i])[-self.k:][::-1] for i in range(self.L)})
        finally:
            for h in handles:
                h.remove()
        return {i: set.intersection(*(set(d[i].tolist()) for d in per_doc)) for i in range(self.L)}


# ---- driver ---------------------------------------------------------------------------------------
def documents(model_name: str, tokenizer, langs: list[str], docs: int, max_tokens: int) -> list[list[list[int]]]:  # noqa: ANN001
    """Encodings per language: Bible verses for real models, random token ids (lengths 5..max) for tiny ones."""
    from neuronspec.models.forward import encode

    if model_name.startswith(("tiny-", "random-")):
        g = torch.Generator().manual_seed(0)
        return [[[1] + torch.randint(4, 96, (int(n),), generator=g).tolist()
                 for n in torch.randint(5, max_tokens, (docs,), generator=g)] for _ in langs]
    from neuronspec.data import load_corpus

    corpus = load_corpus("builtin:bible", langs, split="detect", docs_per_language=docs)
    return [encode(tokenizer, [d.text for d in corpus[lang]], max_tokens) for lang in langs]


def alternate(sides: dict[str, Callable[[], object]], model: nn.Module,
              args: argparse.Namespace) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each side over `args.repeats` rounds, the sides taking turns; and each side's last result.

    The reference runs on torch's default linears unless --reference-onednn."""
    runs: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, object] = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            with plain_linears(model) if name == "reference" and not args.reference_onednn else nullcontext():
                start = time.perf_counter()
                results[name] = fn()
                runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(r) for name, r in runs.items()}, results


def report(method: str, ref: Timed, ours: Timed) -> None:
    print(f"  {method}")
    print(ref.line())
    print(ours.line())
    print(f"    neuronspec / reference: time {ours.seconds / ref.seconds:.3f}, "
          f"throughput (tokens/s) {(ours.tokens / ours.seconds) / (ref.tokens / ref.seconds):.2f}x")


def bench_lape(model, per_lang, args, pad: int) -> None:  # noqa: ANN001
    from neuronspec.methods.activations import activation_statistics
    from neuronspec.models.forward import iter_packed

    ref = LapeReference(model)
    rows = [lape_rows(enc, args.lape_row) for enc in per_lang]
    if any(r.shape[0] == 0 for r, _ in rows):
        raise SystemExit(f"a language's token stream is shorter than one row of {args.lape_row}; lower --lape-row")

    def ours(skip_first: bool = True):  # noqa: ANN202
        return [activation_statistics(model, iter_packed(enc, batch_size=args.batch_size, pad_id=pad), poolings=(),
                                      thresholds=(), gate_counts=True, n_samples=len(enc), skip_first=skip_first)
                for enc in per_lang]

    times, results = alternate({"reference": lambda: [ref.run(r, args.batch_size) for r, _ in rows],
                                "neuronspec": ours}, model, args)
    positions = sum(b.input_ids.numel() for enc in per_lang for b in iter_packed(enc, batch_size=args.batch_size, pad_id=pad))
    real = sum(len(e) for enc in per_lang for e in enc)
    dropped = sum(d for _, d in rows)
    report(f"LAPE (reference rows of {args.lape_row} tokens, {dropped} tail tokens dropped over {len(per_lang)} languages)",
           Timed("reference", times["reference"], sum(r.numel() for r, _ in rows), sum(r.numel() for r, _ in rows)),
           Timed("neuronspec", times["neuronspec"], positions, real))
    print(f"    tokens counted: reference {sum(r.numel() for r, _ in rows)} (every position of its rows), "
          f"neuronspec {sum(s.tokens for s in results['neuronspec'])} (every document's tokens but its first)")
    # the event: the reference's patched MLP on one document per row against neuronspec with every token counted
    alone = [ref.run(torch.tensor([e]), 1).over_zero.long() for enc in per_lang for e in enc]
    ref_counts = torch.stack(alone).sum(0)
    ns_counts = sum(s.gate_counts for s in ours(skip_first=False))
    differ = int((ref_counts != ns_counts).sum())
    print(f"    same documents, every token: reference (one document per row) and neuronspec gate counts differ in "
          f"{differ} of {ref_counts.numel()} neurons (largest difference {int((ref_counts - ns_counts).abs().max())} "
          f"of {sum(len(e) for enc in per_lang for e in enc)} tokens)")
    p_ref = torch.stack([c.over_zero.double() / c.n for c in results["reference"]])
    p_ns = torch.stack([s.gate_probability() for s in results["neuronspec"]])
    print(f"    as timed (rows across documents, tail dropped, BOS kept | per document, BOS skipped): "
          f"|p_ref - p_neuronspec| mean {float((p_ref - p_ns).abs().mean()):.4f}, largest {float((p_ref - p_ns).abs().max()):.3f}")


def bench_linguafranca(model, per_lang, args, pad: int) -> None:  # noqa: ANN001
    from neuronspec.methods.activations import activation_statistics
    from neuronspec.models.forward import iter_packed

    ref = LinguaFrancaReference(model)
    everything = [e for enc in per_lang for e in enc]

    def ours(skip_first: bool = True):  # noqa: ANN202
        return [activation_statistics(model, iter_packed(enc, batch_size=args.batch_size, pad_id=pad), poolings=("mean",),
                                      thresholds=(), n_samples=len(enc), skip_first=skip_first) for enc in per_lang]

    times, results = alternate({"reference": lambda: ref.run(everything, pad), "neuronspec": ours}, model, args)
    tokens = sum(len(e) for e in everything)
    positions = sum(b.input_ids.numel() for enc in per_lang for b in iter_packed(enc, batch_size=args.batch_size, pad_id=pad))
    report("LinguaFranca (reference: batch 1, generate(max_new_tokens=1))",
           Timed("reference", times["reference"], tokens, tokens),
           Timed("neuronspec", times["neuronspec"], positions, tokens))
    ref_mean = torch.stack([v / len(e) for v, e in zip(results["reference"], everything)])
    ns_mean = torch.cat([s.pooled["mean"] for s in ours(skip_first=False)])
    print(f"    pooled vectors (reference sum / tokens vs neuronspec mean, every token): largest |difference| "
          f"{float((ref_mean - ns_mean).abs().max()):.2e} (largest |value| {float(ref_mean.abs().max()):.2e})")


def bench_plnd(model, per_lang, args, pad: int) -> None:  # noqa: ANN001
    from neuronspec.methods.plnd import plnd_statistics
    from neuronspec.models.forward import can_pack, iter_batches, iter_packed
    from neuronspec.models.sites import adapter_for

    width = adapter_for(model.config).dims(model.config).intermediate
    k = max(1, round(PLND_TOPK_FRACTION * width))
    ref = PlndReference(model, k)
    make = iter_packed if can_pack(model) else iter_batches  # as the stage batches
    ours = lambda: [plnd_statistics(model, make(enc, batch_size=args.batch_size, pad_id=pad), ["ffn"],  # noqa: E731
                                    token_reduce="mean", top_k={"ffn": k}) for enc in per_lang]
    times, results = alternate({"reference": lambda: [ref.run(enc, pad) for enc in per_lang], "neuronspec": ours}, model, args)
    tokens = sum(len(e) for enc in per_lang for e in enc)
    positions = sum(b.input_ids.numel() for enc in per_lang for b in make(enc, batch_size=args.batch_size, pad_id=pad))
    report(f"PLND ffn (reference: batch 1, generate(max_new_tokens=1), per-document top {k} of {width})",
           Timed("reference", times["reference"], tokens, tokens),
           Timed("neuronspec", times["neuronspec"], positions, tokens))
    both = either = ref_size = our_size = 0
    for ref_sets, stats in zip(results["reference"], results["neuronspec"]):
        st = stats["ffn"]
        for layer, kept in ref_sets.items():
            ours_set = set((st.topk_hits[layer] >= st.n_docs).nonzero().flatten().tolist())
            both, either = both + len(kept & ours_set), either + len(kept | ours_set)
            ref_size, our_size = ref_size + len(kept), our_size + len(ours_set)
    print(f"    different scores (Σ|up| vs Σ a²·‖W_down‖²): neurons in the top {k} of their layer for every document "
          f"of their language: reference {ref_size}, neuronspec {our_size}, in both {both} (Jaccard "
          f"{both / either if either else float('nan'):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--languages", default="en,zh,fr,hi")
    parser.add_argument("--docs", type=int, default=32, help="per language")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="neuronspec's documents per batch; the LAPE reference's rows")
    parser.add_argument("--lape-row", type=int, default=256, help="the LAPE reference's row length (max_model_len there)")
    parser.add_argument("--methods", default="lape,linguafranca,plnd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-onednn", action="store_true",
                        help="run the references on neuronspec's oneDNN linears too (default: torch's, as published)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load(args.model, "cpu")
    langs = args.languages.split(",")
    per_lang = documents(args.model, tokenizer, langs, args.docs, args.max_tokens)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    real = sum(len(e) for enc in per_lang for e in enc)
    print(f"{args.model}, {len(langs)} languages x {args.docs} documents ({real} tokens), batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.repeats}; reference linears: "
          f"{'oneDNN (as neuronspec)' if args.reference_onednn else 'torch default (as published)'}")
    benches = {"lape": bench_lape, "linguafranca": bench_linguafranca, "plnd": bench_plnd}
    with torch.no_grad():
        for name in args.methods.split(","):
            benches[name](model, per_lang, args, pad)


if __name__ == "__main__":
    main()
