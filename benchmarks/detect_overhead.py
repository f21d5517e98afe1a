"""Detection and masking overhead against the project's bars (docs/benchmarks.md, "Bars") and issue #12.

    python benchmarks/detect_overhead.py [--docs 32 --max-tokens 128 --batch-size 8 --model gemma-3-270m]
    python benchmarks/detect_overhead.py --model tiny-llama --docs 8 --repeats 2   # smoke run, seconds
    # the CPU proxy of the q/k bar: 1 thread, 512-token documents
    python benchmarks/detect_overhead.py --model random-llama-small --threads 1 --max-tokens 512 --docs 8 --batch-size 4
    # GPU, no download: the 1B/3B/7B random Llamas at 512 and 2,048 tokens, one command
    python benchmarks/detect_overhead.py --model random-llama-1b,random-llama-3b,random-llama-7b \
        --max-tokens 512,2048 --dtype bfloat16 --device cuda --docs 128 --batch-size 32 --json gpu.json

Everything runs on the SAME batches (``forward.encode`` + ``iter_batches``):

* ``forward``: the plain headless forward (``hidden_forward``, no unembedding) — the baseline;
* ``plnd ffn`` / ``plnd attn.q`` / ``attn.k`` / ``attn.v`` / ``attn.o`` (each site alone),
  ``plnd ffn+v+o`` and ``plnd all``: :func:`plnd_statistics` with those sites (``--sites``
  picks some);
* ``ppl`` / ``ppl masked``: :func:`perplexity` without and with a realistic mask (1,000 random
  ffn + attention neurons, applied as the evaluation stage does, by zeroing their weights in place);
* peak memory of each configuration for N and 2N documents, each in a fresh subprocess
  (Linux: VmHWM after resetting it through /proc/self/clear_refs, with the weights' pages made
  resident first and glibc returning freed blocks at once; CUDA: max_memory_allocated), which
  must not grow with the number of documents.

Bars (`bars()`): CPU — ffn <= 1.15x, all sites <= 2x at <= 128 tokens, attn.q / attn.k <= 3x at
>= 512 tokens, masked <= 1.05x; CUDA — ffn / v / o / ffn+v+o <= 1.05x, attn.q / attn.k <= 2x at
512 tokens and <= 3x at 2,048, masked <= 1.03x. Random and tiny models read synthetic text that
fills `--max-tokens` (character tokenizer).

The machine this runs on may be shared and noisy: every configuration is warmed up once, then
timed in `--repeats` rounds; a round times the baseline, then each configuration, and a
configuration's ratio in a round is its time over the mean of the baselines timed just before
and just after it. Reported times are medians; ratios are medians of those paired ratios. CPU
time (process_time) is reported next to wall time: under contention it is the steadier of the two.
Bars are judged on the wall-time ratio. Nothing here asserts; it prints PASS / FAIL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

SITE_CONFIGS: dict[str, list[str]] = {
    "plnd ffn": ["ffn"],
    "plnd attn.q": ["attn.q"],
    "plnd attn.k": ["attn.k"],
    "plnd attn.v": ["attn.v"],
    "plnd attn.o": ["attn.o"],
    "plnd ffn+v+o": ["ffn", "attn.v", "attn.o"],
    "plnd all": ["ffn", "attn.q", "attn.k", "attn.v", "attn.o"],
}
MASK_SITES = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")


def bars(device: str, max_tokens: int) -> dict[str, float]:
    """The bars (docs/benchmarks.md, "Bars"; issue #12) for this device and document length."""
    if device.startswith("cuda"):
        qk = 2.0 if max_tokens <= 512 else 3.0
        return {"plnd ffn": 1.05, "plnd attn.v": 1.05, "plnd attn.o": 1.05, "plnd ffn+v+o": 1.05,
                "plnd attn.q": qk, "plnd attn.k": qk, "ppl masked": 1.03}
    out = {"plnd ffn": 1.15, "ppl masked": 1.05}
    if max_tokens <= 128:
        out["plnd all"] = 2.0
    if max_tokens >= 512:  # the CPU proxy bar: random-llama-small, 1 thread, 512-token documents
        out.update({"plnd attn.q": 3.0, "plnd attn.k": 3.0})
    return out


#: Llama-shaped models with random weights, for throughput and memory at scale without downloads
#: (hidden, layers, intermediate, heads, kv heads); vocabulary 32,000 like Llama-2.
RANDOM_LLAMAS = {
    "random-llama-1b": (2048, 16, 5632, 32, 4),   # TinyLlama-1.1B's shape
    "random-llama-3b": (3200, 26, 8640, 32, 32),  # OpenLLaMA-3B's shape
    "random-llama-7b": (4096, 32, 11008, 32, 32),  # Llama-2-7B's shape
    "random-llama-small": (256, 4, 688, 4, 2),     # CPU smoke test of this path
}


# ---- setup ---------------------------------------------------------------------------------
def random_llama(name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised Llama of a preset shape, built directly on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv = RANDOM_LLAMAS[name]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=32000,
                         max_position_embeddings=4096, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


def load(model_name: str, device: str, dtype: str = "float32") -> tuple[torch.nn.Module, Any]:
    """The model as `load_model` gives it (on the CPU: float32 linears through oneDNN, see models/onednn.py)."""
    from neuronspec.models.onednn import use_onednn
    from neuronspec.models.testing import tiny_tokenizer

    if model_name in RANDOM_LLAMAS:
        model, tokenizer = random_llama(model_name, device, getattr(torch, dtype)), tiny_tokenizer()
    elif model_name.startswith("tiny-"):
        from neuronspec.models.tiny import tiny_model

        model, tokenizer = tiny_model(model_name.removeprefix("tiny-")), tiny_tokenizer()
    else:
        from neuronspec.models.loading import load_model

        lm = load_model(model_name, dtype=dtype)
        model, tokenizer = lm.model, lm.tokenizer
    use_onednn(model)
    return model.to(device).eval(), tokenizer


@contextmanager
def plain_linears(model: torch.nn.Module) -> Iterator[None]:
    """The model's linears back on torch's default BLAS (MKL on x86) inside the block, as
    transformers builds them: undoes what `load` installed, and redoes it on exit."""
    from neuronspec.models.onednn import OneDNNLinear

    swapped = [m for m in model.modules() if type(m) is OneDNNLinear]
    for m in swapped:
        m.__class__ = torch.nn.Linear
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = OneDNNLinear


def corpus_texts(model_name: str, n_docs: int, languages: list[str], source: str, max_tokens: int) -> list[str]:
    """`n_docs` documents, languages interleaved; tiny and random models get deterministic
    synthetic text (character tokenizer) long enough to fill `max_tokens`, so "512 tokens" means 512."""
    if model_name.startswith(("tiny-", "random-")):
        rng = random.Random(0)
        words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "seven"]
        texts = []
        for _ in range(n_docs):
            text = ""
            while len(text) < max_tokens:
                text += rng.choice(words) + " "
            texts.append(text)
        return texts
    from neuronspec.data import load_corpus

    per_lang = math.ceil(n_docs / len(languages))
    docs = load_corpus(source, languages, split="detect", docs_per_language=per_lang)
    mixed = [d.text for group in zip(*(docs[lang] for lang in languages)) for d in group]
    if len(mixed) < n_docs:
        raise SystemExit(f"{source} gave only {len(mixed)} documents for {languages}; asked for {n_docs}")
    return mixed[:n_docs]


def make_batches(tokenizer: Any, texts: list[str], max_tokens: int, batch_size: int, device: str) -> list[Any]:
    from neuronspec.models.forward import Batch, encode, iter_batches

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encodings = [e for e in encode(tokenizer, texts, max_tokens) if len(e) >= 2]
    return [Batch(b.index, b.input_ids.to(device), b.attention_mask.to(device))
            for b in iter_batches(encodings, batch_size=batch_size, pad_id=int(pad))]


def realistic_mask(model: torch.nn.Module, total: int, seed: int = 0) -> Any:
    """`total` random neurons, half ffn and half spread over the attention sites, over all layers."""
    from neuronspec.models.masks import NeuronSet
    from neuronspec.models.sites import adapter_for, site_width

    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    sites = [s for s in MASK_SITES if s == "ffn" or adapter.supports_attention_interface]
    share = {s: (total // 2 if s == "ffn" else total // 2 // (len(sites) - 1)) for s in sites} if len(sites) > 1 \
        else {"ffn": total}
    template: dict[str, dict[int, range]] = {}
    for site, n in share.items():
        per_layer, extra = divmod(n, dims.num_layers)
        width = site_width(dims, site)
        template[site] = {layer: range(min(width, per_layer + (layer < extra))) for layer in range(dims.num_layers)}
    return NeuronSet.from_dict(template).random_like(dims, seed=seed)


# ---- the measured workloads ----------------------------------------------------------------
def workloads(model: torch.nn.Module, tokenizer: Any, batches: list[Any], texts: list[str],
              args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], Any]:
    """The timed callables by name, and the mask that "ppl masked" applies."""
    from neuronspec.evaluate.perplexity import perplexity
    from neuronspec.methods.plnd import plnd_statistics
    from neuronspec.models.forward import hidden_forward
    from neuronspec.models.masks import zeroed

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                hidden_forward(model, b.input_ids, b.attention_mask)

    def plnd(sites: list[str]) -> Callable[[], Any]:
        return lambda: plnd_statistics(model, batches, sites)

    def ppl() -> Any:
        return perplexity(model, tokenizer, texts, batch_size=args.batch_size, max_tokens=args.max_tokens, bootstrap=0)

    mask = realistic_mask(model, args.mask_neurons)

    def ppl_masked() -> Any:  # as the evaluation stage applies a mask
        with zeroed(model, mask):
            return ppl()

    out: dict[str, Callable[[], Any]] = {"forward": forward}
    out.update({name: plnd(sites) for name, sites in SITE_CONFIGS.items()})
    out.update({"ppl": ppl, "ppl masked": ppl_masked})
    return out, mask


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w, time.process_time() - c


def paired_rounds(base: Callable[[], Any], others: dict[str, Callable[[], Any]], repeats: int,
                  device: str, label: str) -> dict[str, dict[str, Any]]:
    """Warm up, then `repeats` rounds of base, other1, other2, ...; one closing base."""
    for name, fn in [("base", base), *others.items()]:
        print(f"  warm-up {label}: {name}", file=sys.stderr, flush=True)
        fn()
    base_t: list[tuple[float, float]] = []
    other_t: dict[str, list[tuple[float, float]]] = {n: [] for n in others}
    for r in range(repeats):
        base_t.append(timed(base, device))
        for name, fn in others.items():
            other_t[name].append(timed(fn, device))
        print(f"  round {r + 1}/{repeats} {label}: base {base_t[-1][0]:.2f}s, "
              + ", ".join(f"{n} {v[-1][0]:.2f}s" for n, v in other_t.items()), file=sys.stderr, flush=True)
    base_t.append(timed(base, device))
    res: dict[str, dict[str, Any]] = {"base": _summary(base_t)}
    for name, ts in other_t.items():
        s = _summary(ts)
        for k, which in (("ratio", 0), ("cpu_ratio", 1)):
            pairs = [t[which] / ((base_t[i][which] + base_t[i + 1][which]) / 2) for i, t in enumerate(ts)]
            s[k] = statistics.median(pairs)
            s[f"{k}s"] = pairs
        res[name] = s
    return res


def _summary(ts: list[tuple[float, float]]) -> dict[str, Any]:
    return {"wall_s": statistics.median(t[0] for t in ts), "cpu_s": statistics.median(t[1] for t in ts),
            "wall_all": [t[0] for t in ts]}


# ---- peak memory (one fresh process per configuration and corpus size) ---------------------
def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Run configuration `args.memory_probe` once over `args.docs` documents; peak memory above the start."""
    model, tokenizer = load(args.model, args.device, args.dtype)
    texts = corpus_texts(args.model, args.docs, args.languages, args.corpus, args.max_tokens)
    batches = make_batches(tokenizer, texts, args.max_tokens, args.batch_size, args.device)
    fns, _ = workloads(model, tokenizer, batches, texts, args)
    from neuronspec.models.forward import hidden_forward

    with torch.no_grad():  # warm-up of one batch: lazy allocations of the model itself are not the method's
        hidden_forward(model, batches[0].input_ids, batches[0].attention_mask)
        # Weights may be memory-mapped from the checkpoint: pages of the embedding table become
        # resident as new tokens are looked up, which would count as "growth" with more documents.
        # Touch every page now so that the peak below measures allocations only.
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()
    fn = fns[args.memory_probe]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"method": "cuda max_memory_allocated", "peak_delta_mb": (torch.cuda.max_memory_allocated() - start) / 2**20}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        start = _rss_kb("VmRSS")
        fn()
        return {"method": "VmHWM after clear_refs", "peak_delta_mb": (_rss_kb("VmHWM") - start) / 1024}
    except OSError:
        import psutil

        proc, peak, done = psutil.Process(), [0], threading.Event()
        start = proc.memory_info().rss

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        fn()
        done.set()
        th.join()
        return {"method": "psutil RSS sampled every 2 ms", "peak_delta_mb": (max(peak[0], proc.memory_info().rss) - start) / 2**20}


def run_probe(args: argparse.Namespace, config: str, docs: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-probe", config, "--docs", str(docs), "--max-tokens", str(args.max_tokens),
           "--batch-size", str(args.batch_size), "--model", args.model, "--device", args.device,
           "--languages", ",".join(args.languages), "--corpus", args.corpus, "--threads", str(args.threads),
           "--mask-neurons", str(args.mask_neurons), "--dtype", args.dtype]
    # A fixed mmap threshold turns off glibc's adaptive one, so freed tensors go back to the OS
    # at once: RSS then follows live memory instead of what earlier frees left in the heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {config} ({docs} docs) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- main ------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=32, help="documents N (memory is also measured with 2N)")
    p.add_argument("--max-tokens", default="128", help="document length; several comma-separated (e.g. 512,2048) run one after the other")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default="gemma-3-270m",
                   help=f"embedded/hub model, tiny-<arch> (e.g. tiny-llama), or one of {', '.join(RANDOM_LLAMAS)}; "
                        "several comma-separated run one after the other")
    p.add_argument("--sites", help="comma-separated configurations to time (default: all of "
                                   f"{', '.join(SITE_CONFIGS)})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--languages", type=lambda s: s.split(","), default=["en", "zh"])
    p.add_argument("--corpus", default="builtin:bible-passages")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (medians reported)")
    p.add_argument("--mask-neurons", type=int, default=1000)
    p.add_argument("--ppl-docs", type=int, help="documents for the perplexity comparison (default: all N)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--json", type=Path, help="also write all measurements here")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_probe:
        args.max_tokens = int(args.max_tokens)
        print(json.dumps(memory_probe(args)))
        return

    configs = list(SITE_CONFIGS) if not args.sites else args.sites.split(",")
    unknown = [c for c in configs if c not in SITE_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown --sites {unknown}; known: {', '.join(SITE_CONFIGS)}")
    runs = []
    for model_name in args.model.split(","):
        for max_tokens in (int(t) for t in str(args.max_tokens).split(",")):
            one = argparse.Namespace(**{**vars(args), "model": model_name, "max_tokens": max_tokens})
            runs.append(measure(one, configs))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=1))
        print(f"wrote {args.json}")


def measure(args: argparse.Namespace, configs: list[str]) -> dict[str, Any]:
    """Every measurement for one model and document length; prints its report, returns it."""
    load_start = os.getloadavg()
    model, tokenizer = load(args.model, args.device, args.dtype)
    texts = corpus_texts(args.model, args.docs, args.languages, args.corpus, args.max_tokens)
    batches = make_batches(tokenizer, texts, args.max_tokens, args.batch_size, args.device)
    tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
    padded = int(sum(b.attention_mask.numel() for b in batches))
    ppl_texts = texts[: args.ppl_docs or len(texts)]
    fns, mask = workloads(model, tokenizer, batches, ppl_texts, args)
    mask_size = mask.count()
    header = (f"{args.model}: {len(texts)} docs x <= {args.max_tokens} tokens, {len(batches)} batches of <= "
              f"{args.batch_size}, {tokens} tokens ({padded} with padding); perplexity on {len(ppl_texts)} docs, "
              f"mask of {mask_size} random neurons; {args.repeats} rounds, {torch.get_num_threads()} threads, "
              f"device {args.device}")
    print(header, file=sys.stderr)

    timing = paired_rounds(fns["forward"], {n: fns[n] for n in configs}, args.repeats, args.device, "detect")
    ppl_tokens = tokens
    timing["forward"] = timing.pop("base")
    if not args.skip_ppl:
        from neuronspec.models.forward import encode

        ppl_tokens = sum(len(e) for e in encode(tokenizer, ppl_texts, args.max_tokens))  # tokens read, as above
        ppl = paired_rounds(fns["ppl"], {"ppl masked": fns["ppl masked"]}, args.repeats, args.device, "ppl")
        timing["ppl"] = ppl.pop("base")
        timing.update(ppl)

    memory: dict[str, dict[str, Any]] = {}
    if not args.skip_memory:
        for config in ["forward", *configs]:
            memory[config] = {}
            for n in (args.docs, 2 * args.docs):
                print(f"  memory: {config}, {n} docs", file=sys.stderr, flush=True)
                memory[config][str(n)] = run_probe(args, config, n)

    # ---- report -----------------------------------------------------------------------------
    print(header)
    rows, verdicts = [], {}
    limits = bars(args.device, args.max_tokens)
    for name in ["forward", *configs, "ppl", "ppl masked"]:
        if name not in timing:
            continue
        t = timing[name]
        t["tokens_per_s"] = (ppl_tokens if name.startswith("ppl") else tokens) / t["wall_s"]
        bar = limits.get(name)
        ok = None if bar is None or "ratio" not in t else t["ratio"] <= bar
        if ok is not None:
            verdicts[f"time: {name} <= {bar}x"] = ok
        rows.append([name, f"{t['wall_s']:.3f}", f"{t['cpu_s']:.3f}", f"{t['tokens_per_s']:.0f}",
                     f"{t['ratio']:.3f}" if "ratio" in t else "1 (base)" if name in ("forward", "ppl") else "",
                     f"{t['cpu_ratio']:.3f}" if "cpu_ratio" in t else "",
                     f"<= {bar}" if bar else "", "" if ok is None else "PASS" if ok else "FAIL"])
    _table(["measurement", "wall s (median)", "cpu s", "tokens/s", "ratio (wall)", "ratio (cpu)", "bar", ""], rows)
    print("ratios: plnd * against forward, ppl masked against ppl; medians of per-round paired ratios")

    if memory:
        mrows = []
        n1, n2 = str(args.docs), str(2 * args.docs)
        for config, by_n in memory.items():
            a, b = by_n[n1]["peak_delta_mb"], by_n[n2]["peak_delta_mb"]
            growth = b - a
            # independent of corpus size: doubling the documents may not add more than noise
            ok = growth <= max(16.0, 0.1 * abs(a))
            if config != "forward":
                verdicts[f"memory: {config} independent of docs"] = ok
            mrows.append([config, f"{a:.1f}", f"{b:.1f}", f"{growth:+.1f}", "PASS" if ok else "FAIL"])
        method = next(iter(next(iter(memory.values())).values()))["method"]
        _table(["peak memory above start (MiB)", f"{n1} docs", f"{n2} docs", "growth", ""], mrows)
        print(f"memory: {method}, one fresh process per cell; growth allowed: max(16 MiB, 10%)")

    print()
    for name, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    load_end = os.getloadavg()
    print(f"load average at start {load_start[0]:.1f}, at end {load_end[0]:.1f} ({os.cpu_count()} CPUs)")

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "memory_probe"},
        "documents": len(texts), "batches": len(batches), "tokens": tokens, "padded_tokens": padded,
        "mask_neurons": mask_size,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "platform": platform.platform(), "load_average_start": load_start, "load_average_end": load_end,
                        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "timing": timing, "memory": memory, "bars": limits,
        "verdicts": verdicts,
    }


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
