"""Data-parallel PLND statistics: tokens/s with 1 process against N processes (torchrun).

    python benchmarks/data_parallel.py [--ranks 2 --docs 32 --max-tokens 128 --model gemma-3-270m]
    python benchmarks/data_parallel.py --model tiny-llama --docs 16      # smoke run, seconds

Each configuration runs the statistics of a `stats/plnd/LANG` stage (sites ffn, attn.v,
attn.o) the way `neuronspec run` does under torchrun: every rank loads the model, takes its
contiguous shard of the documents, streams it, and the per-neuron statistics are all-reduced
(MIN / SUM). The same documents and threads in total: 1 process × T threads against N
processes × T/N threads, so on a CPU the comparison is "one process using every core"
against "N processes sharing them" — the ratio shows what the sharding and the reduction
cost; on a multi-GPU node (--device cuda) each rank gets its own GPU and the ratio is the
speed-up. Also printed: whether the reduced statistics equal the single-process ones.
Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detect_overhead import corpus_texts, load  # noqa: E402  (same models, corpora and batches)

SITES = ["ffn", "attn.v", "attn.o"]


def worker(args: argparse.Namespace) -> None:
    """One rank: shard, stream, reduce; rank 0 prints timing and the reduced statistics' digest."""
    from neuronspec import distributed
    from neuronspec.methods.plnd import plnd_statistics
    from neuronspec.models.forward import encode, iter_batches

    world = distributed.init_from_env(args.device)
    device = distributed.rank_device(args.device)
    torch.set_num_threads(max(1, args.threads // world.size))
    model, tokenizer = load(args.model, device, args.dtype)
    texts = corpus_texts(args.model, args.docs, args.languages, args.corpus, args.max_tokens)
    encodings = [e for e in encode(tokenizer, texts, args.max_tokens) if len(e) >= 2]
    local = distributed.shard(encodings)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def batches():  # noqa: ANN202
        for b in iter_batches(local, batch_size=args.batch_size, pad_id=pad, token_budget=args.batch_tokens):
            yield type(b)(b.index, b.input_ids.to(device), b.attention_mask.to(device))

    with torch.no_grad():  # warm-up on one batch: lazy allocations are not the method's
        plnd_statistics(model, [next(iter(batches()))], SITES)
    times = []
    for _ in range(args.repeats):
        distributed.all_ok(True)  # start together
        start = time.perf_counter()
        stats = {s: st.all_reduce() for s, st in plnd_statistics(model, batches(), SITES).items()}
        if torch.cuda.is_available() and device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(max(distributed.gather(time.perf_counter() - start)))  # the slowest rank decides
    if world.main:
        tokens = sum(len(e) for e in encodings)
        digest = {s: [float(st.min[torch.isfinite(st.min)].double().sum()), float(st.sum.sum()), st.n_docs]
                  for s, st in stats.items()}
        print(json.dumps({"ranks": world.size, "threads_per_rank": torch.get_num_threads(), "tokens": tokens,
                          "wall_s": sorted(times)[len(times) // 2], "digest": digest}))
    if world.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def launch(args: argparse.Namespace, ranks: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", __file__,
           "--worker", *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // ranks))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{ranks}-rank run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--languages", type=lambda s: s.split(","), default=["en", "zh"])
    p.add_argument("--corpus", default="builtin:bible-passages")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in total, split over the ranks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    one, many = launch(args, 1), launch(args, args.ranks)
    rows = []
    for r in (one, many):
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        rows.append(f"{r['ranks']:>5}  {r['threads_per_rank']:>14}  {r['wall_s']:>10.3f}  {r['tokens_per_s']:>10.0f}")
    same = all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for s in one["digest"] for a, b in zip(one["digest"][s], many["digest"][s]))
    print(f"{args.model}: PLND statistics ({', '.join(SITES)}) over {one['tokens']} tokens ({args.docs} docs x <= "
          f"{args.max_tokens}), device {args.device}, {args.threads} threads in total")
    print("ranks  threads / rank  wall s (med)    tokens/s")
    print("\n".join(rows))
    print(f"throughput {many['ranks']} ranks / 1 rank: {many['tokens_per_s'] / one['tokens_per_s']:.2f}x; "
          f"reduced statistics {'equal' if same else 'DIFFER from'} the single-process ones")
    if args.json:
        args.json.write_text(json.dumps({"one": one, "many": many, "same": same, "args": vars(args)}, indent=1, default=str))


if __name__ == "__main__":
    main()
