"""Deactivation arms exported as Hugging Face folders: reloaded with AutoModelForCausalLM, their
logits equal the hooked model's; the model in memory is left bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_studies import STUDY, make_corpus
from transformers import AutoModelForCausalLM

from neuronspec.models.export import export_deactivated
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.sites import SITES, adapter_for, site_width
from neuronspec.models.tiny import ARCHITECTURES, MOE_ARCHITECTURES, tiny_model


def _some_neurons(model: torch.nn.Module, seed: int = 0) -> NeuronSet:
    dims = adapter_for(model).dims(model.config)
    g = torch.Generator().manual_seed(seed)
    return NeuronSet({site: {layer: torch.randperm(site_width(dims, site), generator=g)[:3]
                             for layer in range(dims.num_layers)} for site in SITES})


@pytest.mark.parametrize("arch", ARCHITECTURES + MOE_ARCHITECTURES)
def test_exported_folder_reloads_with_the_hooked_models_logits(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    neurons = _some_neurons(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_deactivated(model, None, neurons, tmp_path / "arm")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the loaded model must be restored"
    ids = torch.randint(4, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        base = model(ids).logits
        with deactivate(model, neurons):
            hooked = model(ids).logits
        exported = reloaded(ids).logits
    torch.testing.assert_close(exported, hooked, rtol=1e-5, atol=1e-5)
    assert (exported - base).abs().max() > 1e-3  # the neurons matter, so equality above means something
    assert NeuronSet.load(out / "neuronspec_neurons.safetensors") == neurons
    with pytest.raises(FileExistsError):
        export_deactivated(model, None, neurons, out)


def test_export_command_writes_a_deactivation_arm(tmp_path: Path, tiny_model_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.cli import main
    from neuronspec.models.loading import load_model
    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.store import Store
    from neuronspec.spec import load_study

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    out = tmp_path / "early-fr"
    assert main(["export", str(study), "early", "--lang", "fr", "--out", str(out)]) == 1  # mask not computed yet
    assert main(["run", "-q", str(study), "--only", "mask/early-random"]) == 0
    assert main(["export", str(study), "early", "--out", str(out)]) == 2  # a family arm needs --lang
    assert main(["export", str(study), "nope", "--lang", "fr", "--out", str(out)]) == 2
    assert main(["export", str(study), "early", "--lang", "fr", "--out", str(out)]) == 0
    assert main(["export", str(study), "early-random", "--lang", "fr", "--out", str(tmp_path / "r")]) == 2  # which draw?
    assert main(["export", str(study), "early-random", "--lang", "fr", "--draw", "2", "--out", str(tmp_path / "r")]) == 0

    plan = compile_study(load_study(study))
    neurons = NeuronSet.load(Store(tmp_path / ".neuronspec").get(plan.stages["mask/early"].key).file("mask.fr.safetensors"))
    assert neurons.count() > 0
    lm = load_model(str(tiny_model_dir))
    ids = lm.tokenizer(["abcd efgh", "ijkl mnop qr"], return_tensors="pt", padding=True)
    with torch.no_grad(), deactivate(lm.model, neurons):
        want = lm.model(**ids).logits
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out).eval()(**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    drawn = NeuronSet.load(tmp_path / "r" / "neuronspec_neurons.safetensors")
    assert drawn == NeuronSet.load(Store(tmp_path / ".neuronspec").get(plan.stages["mask/early-random/draw2"].key)
                                   .file("mask.fr.safetensors")) and drawn.count() == neurons.count()
