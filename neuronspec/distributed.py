"""Data parallelism on torch.distributed: ranks split the documents, statistics are reduced.

neuronspec has no scheduler of its own. `torchrun --nproc_per_node N -m neuronspec run
study.yaml` (or `accelerate launch -m neuronspec run ...`) starts N copies of the same
command; `init_from_env` joins them into one process group (NCCL on GPUs, gloo on CPU).
Every rank compiles the same plan and walks it in the same order; for the stages that read
documents through the model (statistics, evaluation) each rank takes a contiguous shard
of the documents, and the results are reduced — sums and counts with SUM, running minima
with MIN, per-document values gathered back into document order — so every rank ends
with the single-process result and rank 0 writes it to the cache.

Outside a process group every helper here is the identity (`world().size == 1`), so the
methods call them unconditionally. torch is imported only where a process group can exist
(it cannot before torch is imported), so a fully cached run never imports it.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the cache and prints."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items (sizes differ by at most one)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size


def world() -> World:
    if "torch.distributed" not in sys.modules:  # no process group without torch.distributed
        return World()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def launched() -> bool:
    """Whether torchrun / accelerate started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float = 1800) -> World:
    """Join the process group that torchrun / accelerate set up in the environment.

    The backend follows the device: NCCL when the model goes to CUDA, gloo otherwise.
    A no-op when the process was started alone or the group already exists.
    """
    import torch
    import torch.distributed as dist

    if not launched() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def rank_device(device: str) -> str:
    """The device this rank puts the model on: under data parallelism `cuda`/`auto` mean its own GPU."""
    w = world()
    if w.size > 1 and device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{w.local_rank}"
    return device


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of `items` (all of them outside a process group)."""
    lo, hi = world().bounds(len(items))
    return list(items[lo:hi])


def _backend_device() -> torch.device:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The elementwise SUM / MIN / MAX of `tensor` over ranks (returned, on tensor's device)."""
    if world().size == 1:
        return tensor
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    work = tensor.detach().to(_backend_device(), copy=True).contiguous()
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)


def gather(value: Any) -> list[Any]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    w = world()
    if w.size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, value)
    return out


def parallel_map(fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """fn over `items` with each rank doing its shard; every rank gets all results, in order.

    `fn` maps a list to a same-length list (so it can batch); results must be picklable
    and small (per-document numbers, not activations).
    """
    if world().size == 1:
        return fn(list(items))
    local = fn(shard(items))
    parts = gather([_cpu(r) for r in local])
    return [r for part in parts for r in part]


def _cpu(value: Any) -> Any:
    import torch

    return value.cpu() if isinstance(value, torch.Tensor) else value


def all_ok(ok: bool) -> bool:
    """Whether every rank reports `ok`: ranks agree on failure instead of one waiting forever."""
    return all(gather(bool(ok)))


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if world().size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = ["World", "all_ok", "all_reduce", "broadcast", "gather", "init_from_env", "launched", "parallel_map",
           "rank_device", "shard", "world"]
