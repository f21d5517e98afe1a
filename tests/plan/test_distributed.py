"""Data parallelism on torch.distributed (gloo, 2 CPU processes) gives the single-process result.

The study runs twice on a tiny model: once as one process, once under torchrun with two
ranks into a second store. Stage keys do not depend on how a stage was computed, so the
two stores hold the same stages; their neuron sets must be identical and their statistics
and perplexities equal up to float summation order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from neuronspec import distributed
from neuronspec.cli import main
from neuronspec.models.masks import NeuronSet
from neuronspec.plan.compile import compile_study
from neuronspec.plan.store import Store
from neuronspec.spec import load_study


def torchrun(study: Path, store: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "neuronspec", "run", str(study), "--store", str(store), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def compare_stores(study: Path, one: Path, two: Path) -> int:
    """Assert both stores hold the same results; return how many neuron-set files were compared."""
    plan = compile_study(load_study(study))
    a, b = Store(one), Store(two)
    sets_compared = 0
    for sid, stage in plan.stages.items():
        ea, eb = a.get(stage.key), b.get(stage.key)  # KeyError if either run missed a stage
        files = sorted(p.name for p in ea.path.iterdir() if p.suffix == ".safetensors")
        assert files == sorted(p.name for p in eb.path.iterdir() if p.suffix == ".safetensors"), sid
        for name in files:
            if stage.kind in ("select.plnd", "select.lape", "select.linguafranca", "select.sharing", "sets", "mask"):
                assert NeuronSet.load(ea.file(name)) == NeuronSet.load(eb.file(name)), f"{sid}/{name}"
                sets_compared += 1
            else:
                ta, tb = load_file(str(ea.file(name))), load_file(str(eb.file(name)))
                assert ta.keys() == tb.keys()
                for k in ta:
                    assert torch.allclose(ta[k].double(), tb[k].double(), rtol=1e-5, atol=1e-7), f"{sid}/{name}/{k}"
        ra, rb = ea.json(), eb.json()
        if stage.kind == "eval":
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-6), sid
            assert ra["doc_tokens"] == rb["doc_tokens"]
        elif stage.kind in ("stats.plnd", "stats.act", "corpus"):
            assert ra == rb, sid
    return sets_compared


@pytest.mark.parametrize("fixture", ["study_file", "methods_study"])
def test_two_gloo_ranks_give_the_single_process_result(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    study = request.getfixturevalue(fixture)
    study = study() if callable(study) else study
    assert main(["run", str(study), "--store", str(tmp_path / "one"), "--quiet"]) == 0
    done = torchrun(study, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "data-parallel run over 2 ranks (gloo backend)" in done.stderr
    assert compare_stores(study, tmp_path / "one", tmp_path / "two") > 0
    runs = list((tmp_path / "two" / "runs").glob("*/record.json")) if (tmp_path / "two" / "runs").exists() else []
    assert len(runs) <= 1  # only rank 0 writes a run record


def test_a_failing_stage_stops_every_rank(study_file: Path, tmp_path: Path) -> None:
    """A corpus that cannot be read fails on both ranks; nothing hangs and the exit code says so."""
    text = study_file.read_text().replace("docs_per_language: 6", "docs_per_language: 600")
    study_file.write_text(text)
    done = torchrun(study_file, tmp_path / "two")
    assert done.returncode != 0
    assert "docs_per_language" in done.stderr or "600" in done.stderr


# -- the collectives themselves, on uneven shards ---------------------------------------------
def _worker(rank: int, size: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        items = list(range(7))  # 7 items over 2 ranks: shards of 3 and 4
        mine = distributed.shard(items)
        mapped = distributed.parallel_map(lambda part: [x * x for x in part], items)
        low = distributed.all_reduce(torch.tensor([float(min(mine)), 5.0]), "min")
        total = distributed.all_reduce(torch.tensor([sum(mine)], dtype=torch.int64))
        agreed = distributed.all_ok(rank == 0)
        torch.save({"mine": mine, "mapped": mapped, "low": low, "total": total, "agreed": agreed,
                    "root": distributed.broadcast(f"from {rank}")}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collectives_on_uneven_shards(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["mine"] == [0, 1, 2] and r1["mine"] == [3, 4, 5, 6]
    for r in (r0, r1):
        assert r["mapped"] == [x * x for x in range(7)]
        assert r["low"].tolist() == [0.0, 5.0]
        assert int(r["total"]) == 21
        assert r["agreed"] is False  # rank 1 said no
        assert r["root"] == "from 0"


def test_single_process_helpers_are_the_identity() -> None:
    assert distributed.world().size == 1 and distributed.world().main
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.parallel_map(lambda p: [x + 1 for x in p], [1, 2]) == [2, 3]
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(t, "min") is t
