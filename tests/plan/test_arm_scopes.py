"""MWork's arms: random controls drawn per layer, within a partition or across the model, and
set arms of equal size — checked on the masks the stages store, against their definitions."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny_studies import STUDY, make_corpus

from neuronspec.cli import main
from neuronspec.models.masks import NeuronSet
from neuronspec.models.sites import Dims, site_width
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import StudyError, load_study

DIMS = Dims(num_layers=6, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4)
TARGET = NeuronSet({"ffn": {1: torch.tensor([0, 1, 2, 3, 4, 5]), 4: torch.tensor([7])}, "attn.v": {2: torch.tensor([0, 1])}})


def test_pooled_draw_keeps_each_sites_count_and_stays_in_its_layers() -> None:
    for seed in range(5):
        drawn = TARGET.random_pooled(DIMS, seed, layers=[0, 1, 2], exclude=TARGET)
        assert drawn.count("ffn") == 7 and drawn.count("attn.v") == 2  # per site, not per layer
        assert {layer for _, layer, _ in drawn.items()} <= {0, 1, 2}
        assert (drawn & TARGET).count() == 0  # the pool has room: nothing of the matched set
        assert all(int(t.max()) < site_width(DIMS, site) for site, _, t in drawn.items())
    draws = {TARGET.random_pooled(DIMS, seed, layers=range(6)) for seed in range(20)}
    assert len(draws) == 20 and TARGET.random_pooled(DIMS, 3, range(6)) == TARGET.random_pooled(DIMS, 3, range(6))
    # uniform over the pool: across many draws every layer of the pool is hit, in proportion
    hits = torch.zeros(6)
    for seed in range(300):
        for _, layer, t in TARGET.random_pooled(DIMS, seed, layers=range(6)).restrict(sites=["ffn"]).items():
            hits[layer] += t.numel()
    assert hits.min() > 0.6 * hits.mean()
    with pytest.raises(ValueError, match="hold only"):  # 8 attn.v neurons from one layer of 4
        NeuronSet({"attn.v": {0: torch.arange(4), 1: torch.arange(4)}}).random_pooled(DIMS, 0, layers=[0])


def test_subsample_is_a_seeded_uniform_part_of_the_set() -> None:
    part = TARGET.subsample(4, seed=0)
    assert part.count() == 4 and (part & TARGET) == part
    assert part == TARGET.subsample(4, seed=0)  # seeded
    assert len({TARGET.subsample(4, seed=k) for k in range(10)}) > 1  # and the seed matters
    assert TARGET.subsample(100, seed=0) == TARGET


ARMS = """\
  - {{name: early, deactivate: {{neurons: specific, layers: early}}}}
  - {{name: early-random, deactivate: {{random_like: early, draws: 2}}}}
  - {{name: few, deactivate: {{neurons: specific, count: 5}}}}
  - {{name: anywhere, deactivate: {{random_like: few, scope: all, draws: 1}}}}
  - {{name: in-late, deactivate: {{random_like: early, scope: partition, layers: late, draws: 1}}}}
"""


def _with_arms(tmp_path: Path, model_dir: Path, arms: str) -> str:
    """The tiny study with `arms` in place of its own."""
    text = STUDY.format(model=model_dir, corpus=make_corpus(tmp_path / "c.jsonl"))
    head, _, tail = text.partition("arms:\n")
    return head + "arms:\n" + arms + tail.split("evaluate:", 1)[0].split("\n", 2)[2] + "evaluate:" + tail.split("evaluate:", 1)[1]


def test_a_study_with_the_papers_arms_stores_equal_counts(tmp_path: Path, tiny_model_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    text = _with_arms(tmp_path, tiny_model_dir, ARMS.format())
    path = tmp_path / "s.yaml"
    path.write_text(text)
    loaded = load_study(path)
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study, only=["mask/*"])

    def mask(arm: str, lang: str) -> NeuronSet:
        return NeuronSet.load(store.entry_dir(plan.stages[f"mask/{arm}"].key) / f"mask.{lang}.safetensors")

    sets = store.entry_dir(plan.stages["sets"].key)
    for lang in ("en", "fr", "de"):
        specific = NeuronSet.load(sets / f"specific.{lang}.safetensors")
        few, anywhere, late = mask("few", lang), mask("anywhere", lang), mask("in-late", lang)
        assert few.count() == min(5, specific.count()) and (few & specific) == few
        assert {s: anywhere.count(s) for s in anywhere.sites()} == {s: few.count(s) for s in few.sites()}
        early = mask("early", lang)
        assert {s: late.count(s) for s in late.sites()} == {s: early.count(s) for s in early.sites()}
        assert {layer for _, layer, _ in late.items()} <= {2}  # the `late` partition is layer 2 of the tiny model


def test_a_set_smaller_than_count_is_kept_whole_and_said(tmp_path: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal counts are what `count` is for: a set below it cannot be topped up, so the run says so."""
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    text = _with_arms(tmp_path, tiny_model_dir, ARMS.format().replace("count: 5", "count: 100000"))
    loaded = load_study(text=text, name="s.yaml")
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    with pytest.warns(UserWarning, match=r"mask/few: en set has \d+ neurons .*fewer than count 100000"):
        run_plan(plan, store, loaded.study, only=["mask/few"])
    sets = store.entry_dir(plan.stages["sets"].key)
    kept = NeuronSet.load(store.entry_dir(plan.stages["mask/few"].key) / "mask.en.safetensors")
    assert kept == NeuronSet.load(sets / "specific.en.safetensors")
    # the CLI says it in one line, without the line of neuronspec that raised it
    path = tmp_path / "s.yaml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "neuronspec", "run", str(path), "--store", str(tmp_path / "cli-store"),
                           "--only", "mask/few", "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr
    said = [line for line in err.splitlines() if "fewer than count" in line]
    assert said and all(line.startswith("warning: mask/few: ") for line in said), said
    assert "warnings.warn" not in err and "UserWarning" not in err
    before = warnings.formatwarning
    assert main(["validate", str(path)]) == 0
    assert warnings.formatwarning is before  # an in-process caller keeps its own format


def test_scope_and_count_are_checked_where_they_are_written(tmp_path: Path) -> None:
    text = STUDY.format(model="gpt2", corpus=tmp_path / "c.jsonl")
    with pytest.raises(StudyError, match="scope: partition draws from the partition"):
        load_study(text=text.replace("{random_like: early, draws: 2}", "{random_like: early, scope: partition}"), name="s.yaml")
    with pytest.raises(StudyError, match="count subsamples a named set"):
        load_study(text=text.replace("{random_like: early, draws: 2}", "{random_like: early, count: 3}"), name="s.yaml")
    with pytest.raises(StudyError, match="scope says where a `random_like` control draws from"):
        load_study(text=text.replace("{neurons: specific, layers: early}", "{neurons: specific, scope: all}"), name="s.yaml")


def test_on_baseline_pairs_each_languages_set_with_its_language_and_the_baseline(tmp_path: Path, tiny_model_dir: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`on: baseline` evaluates language L's set on L and on the report's baseline language
    (MWork's ΔEng when the sets leave English's neurons out) — not the whole matrix."""
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    text = STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "c.jsonl")).replace(
        "ppl: {metric: perplexity, corpus: ppl, bootstrap: 50}", "ppl: {metric: perplexity, corpus: ppl, bootstrap: 50, on: baseline}")
    assert "on: baseline" in text
    stages = set(compile_study(load_study(text=text, name="s.yaml")).stages)
    early = {s.rsplit("/", 1)[1] for s in stages if s.startswith("eval/ppl/early/")}
    assert early == {"en@en", "fr@fr", "de@de", "fr@en", "de@en"}
    fr = load_study(text=text + "report: {baseline_language: fr}\n", name="s.yaml")
    early = {s.rsplit("/", 1)[1] for s in compile_study(fr).stages if s.startswith("eval/ppl/early/")}
    assert early == {"en@en", "fr@fr", "de@de", "en@fr", "de@fr"}
