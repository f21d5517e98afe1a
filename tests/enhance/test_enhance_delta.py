"""Deltas: save/load, apply and restore, merged copies, Hugging Face export; settings; plot."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from neuronspec.enhance import (
    Delta,
    DeltaEntry,
    EnhanceSettings,
    apply_delta,
    export_model,
    lr_at,
    merged_copy,
    train_neurons,
)
from neuronspec.models.masks import NeuronSet
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model

TEXTS = ["the cat sat on the mat", "a dog barks at night", "hello world, hello again", "neurons fire together"]
SET = NeuronSet.from_dict({"ffn": {0: [1, 5], 2: [3]}, "attn.k": {1: [0, 9]}, "attn.o": {0: [4]}})
FAST = EnhanceSettings(lr=1e-2, effective_batch=2, micro_batch=2, seq_len=24, epochs=2)
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 55, 56]])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module", params=["gemma3_text", "gpt2"])
def trained(request, tok):
    arch = request.param
    model = tiny_model(arch)
    result = train_neurons(model, tok, TEXTS, SET, FAST)
    return arch, model, result


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _identical(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def test_save_load_round_trip(trained, tmp_path):
    _, _, result = trained
    path = result.delta.save(tmp_path / "sub" / "delta.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["delta.safetensors"]  # no temp leftovers
    back = Delta.load(path)
    assert back.equal(result.delta)
    assert back.metadata["settings"] == FAST.to_dict()
    assert back.nbytes() == result.delta.nbytes() > 0
    # Overwriting is atomic too (same path, one file).
    result.delta.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["delta.safetensors"]


def test_load_rejects_other_files(tmp_path):
    SET.save(tmp_path / "set.safetensors")
    with pytest.raises(ValueError, match="not a saved Delta"):
        Delta.load(tmp_path / "set.safetensors")


def test_apply_delta_matches_in_place_training_and_restores(trained, tok):
    arch, model, result = trained
    snap = _snapshot(model)
    base = _logits(model)
    with apply_delta(model, result.delta) as m:
        assert m is model
        tuned = _logits(model)
    assert _identical(model, snap)
    assert torch.equal(_logits(model), base)
    assert not torch.equal(tuned, base)

    in_place = tiny_model(arch)
    train_neurons(in_place, tok, TEXTS, SET, FAST, restore=False)
    assert torch.equal(_logits(in_place), tuned)


def test_apply_delta_restores_on_error(trained):
    _, model, result = trained
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="inside"):
        with apply_delta(model, result.delta):
            assert not _identical(model, snap)
            raise RuntimeError("inside")
    assert _identical(model, snap)


def test_apply_delta_validates(trained):
    _, model, result = trained
    name, e = next(iter(result.delta.entries.items()))
    with pytest.raises(KeyError, match="does not have"):
        with apply_delta(model, Delta({"nope.weight": e})):
            pass
    bad = DeltaEntry(e.dim, e.indices + 10_000, e.values)
    with pytest.raises(ValueError, match="out of range"):
        with apply_delta(model, Delta({name: bad})):
            pass
    with pytest.raises(ValueError, match="slices along dim"):
        DeltaEntry(e.dim, e.indices[:-1], e.values)


def test_merged_copy(trained):
    _, model, result = trained
    snap = _snapshot(model)
    merged = merged_copy(model, result.delta)
    assert _identical(model, snap)
    with apply_delta(model, result.delta):
        assert torch.equal(_logits(merged), _logits(model))


def test_export_round_trip(trained, tok, tmp_path):
    arch, model, result = trained
    snap = _snapshot(model)
    out = export_model(model, tok, result.delta, tmp_path / "enhanced")
    assert _identical(model, snap)
    assert (out / "config.json").exists() and (out / "neuronspec_delta.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with apply_delta(model, result.delta):
        expected = _logits(model)
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=0)
    with pytest.raises(FileExistsError):
        export_model(model, tok, result.delta, out)
    export_model(model, tok, result.delta, out, overwrite=True)
    assert (out / "config.json").exists()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_matches_transformers(schedule):
    import math

    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    total, s = 37, EnhanceSettings(lr=2e-6, warmup_ratio=0.05, schedule=schedule)
    warmup = math.ceil(0.05 * total)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-6)
    if schedule == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    elif schedule == "linear":
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
    else:
        sched = get_constant_schedule_with_warmup(opt, warmup)
    for step in range(total):
        assert lr_at(s, step, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-20)
        opt.step()
        sched.step()


def test_settings_validate_and_round_trip():
    s = EnhanceSettings()
    assert (s.lr, s.epochs, s.effective_batch, s.seq_len, s.max_grad_norm, s.warmup_ratio, s.schedule) == (
        2e-6, 1, 32, 512, 0.3, 0.05, "cosine")
    assert s.accumulation_steps == 8
    assert EnhanceSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="schedule"):
        EnhanceSettings(schedule="step")
    with pytest.raises(ValueError, match="micro_batch"):
        EnhanceSettings(micro_batch=0)
    with pytest.raises(ValueError, match="unknown"):
        EnhanceSettings.from_dict({"learning_rate": 1.0})


def test_plot_losses(tmp_path):
    from neuronspec.report.plots import plot_losses

    (tmp_path / "plots").mkdir()
    fig = plot_losses("tune", {"fr": [4.0, 3.5, 3.2, 3.1]}, tmp_path / "plots" / "loss-tune.png")
    path = tmp_path / "plots" / fig.file
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["loss-tune.pdf", "loss-tune.png", "loss-tune.svg"]
