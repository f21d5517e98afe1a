"""`random_like: ARM, match: magnitude`: a control drawn per layer and magnitude bin, from the
mean |activation| of the sharing corpus's activation pass (computed in that same pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_studies import make_parallel_corpus

from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import load_study
from neuronspec.spec.errors import StudyError

STUDY = """\
name: tiny-matched
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 6, max_tokens: 32}}
detect:
  sharing: {{corpus: parallel, thresholds: [0.0]}}
arms:
  - {{name: shared, deactivate: {{neurons: sharing.all_shared}}}}
  - {{name: shared-random, deactivate: {{random_like: shared, {control}}}}}
"""


def _write(tmp_path: Path, model: Path, control: str) -> Path:
    path = tmp_path / "matched.yaml"
    path.write_text(STUDY.format(model=model, corpus=make_parallel_corpus(tmp_path / "p.jsonl", items=6), control=control))
    return path


def test_magnitude_control_matches_bin_counts_from_the_shared_pass(tmp_path: Path, tiny_model_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from neuronspec.methods.activations import ActivationStats
    from neuronspec.models.masks import NeuronSet

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = _write(tmp_path, tiny_model_dir, "match: magnitude, match_bins: 4, draws: 2")
    loaded = load_study(path)
    plan = compile_study(loaded)
    acts = [f"stats/act/parallel/{lang}" for lang in ("en", "fr", "de")]
    assert [sid for sid in plan.stages if sid.startswith("stats/act/")] == acts  # one pass for sharing and the control
    assert plan.stages["stats/act/parallel/en"].spec.poolings == ["act_last", "mean_abs"]
    for draw in (1, 2):
        assert set(acts) <= set(plan.stages[f"mask/shared-random/draw{draw}"].deps)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study, only=["mask/shared-random/draw1", "mask/shared-random/draw2"])

    # magnitude per neuron: mean over languages of the mean over items of the stored mean |activation|
    per_lang = [ActivationStats.from_tensors(load_file(str(store.get(plan.stages[sid].key).file("activations.safetensors"))))
                for sid in acts]
    magnitude = np.mean([st.per_layer("mean_abs").double().mean(0).numpy() for st in per_lang], axis=0)  # [L, I]
    shared = NeuronSet.load(store.get(plan.stages["mask/shared"].key).file("mask.safetensors"))
    draws = [NeuronSet.load(store.get(plan.stages[f"mask/shared-random/draw{d}"].key).file("mask.safetensors")) for d in (1, 2)]
    assert shared.count() > 0 and draws[0] != draws[1]
    for layer in range(magnitude.shape[0]):
        order = np.argsort(magnitude[layer], kind="stable")
        bin_of = np.empty(len(order), dtype=np.int64)
        bin_of[order] = np.arange(len(order)) * 4 // len(order)
        want = np.bincount(bin_of[shared.indices("ffn", layer).numpy()], minlength=4)
        for drawn in draws:
            assert np.bincount(bin_of[drawn.indices("ffn", layer).numpy()], minlength=4).tolist() == want.tolist()


@pytest.mark.parametrize("control, message", [
    ("match: magnitude, scope: all", r"arms\.1\.deactivate\.match.*needs scope: layer"),
    ("match: magnitude, match_corpus: nope", r"arms\.1\.deactivate\.match_corpus.*nope"),
])
def test_magnitude_control_errors_are_located(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              control: str, message: str) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    with pytest.raises(StudyError, match=message):
        compile_study(load_study(_write(tmp_path, tiny_model_dir, control)))
