"""A tiny study end to end on each sandwich-norm family (post-sublayer norms): PLND on ffn, attn.v
and attn.o, the exclusive sets, a deactivation arm and its random control, perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tiny_studies import STUDY, make_corpus

from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.report.results import collect
from neuronspec.spec import load_study


@pytest.mark.parametrize("arch", ["gemma2", "olmo2"])
def test_tiny_study_runs_end_to_end(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    tiny_model(arch).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model=folder, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    loaded = load_study(path)
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    done = run_plan(plan, store, loaded.study)
    assert set(done.computed) == set(plan.stages)
    cells = collect(plan, store)["evaluations"]["ppl"]["cells"]
    base = {c["lang"]: c["value"] for c in cells if c["arm"] is None}
    arm = {(c["mask_lang"], c["lang"]): c for c in cells if c["arm"] == "early"}
    controls = [c for c in cells if c["arm"] == "early-random"]
    assert len(base) == 3 and len(arm) == 9 and len(controls) == 18  # 3 mask languages × 3 languages (× 2 draws)
    assert all(math.isfinite(c["value"]) for c in cells)
    assert any(c["deactivated"] > 0 and c["value"] != base[c["lang"]] for c in arm.values())
    for c in controls:  # the random control deactivates as many neurons as the arm it copies
        assert c["deactivated"] == arm[(c["mask_lang"], c["lang"])]["deactivated"]
