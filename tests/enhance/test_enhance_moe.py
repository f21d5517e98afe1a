"""Enhancement of mixture-of-experts ffn neurons (Mixtral, Qwen2-MoE): a routed neuron (expert e,
index j) trains rows (e, j) and (e, I + j) of ``gate_up_proj`` [E, 2I, H] and column j of
``down_proj[e]`` [H, I]; a Qwen2-MoE shared-expert neuron trains as in a dense MLP."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from neuronspec.enhance import Delta, EnhanceSettings, apply_delta, export_model, nll_sum, train_neurons
from neuronspec.enhance.train import _make_slots, _register_taps
from neuronspec.models.forward import encode, iter_batches
from neuronspec.models.masks import NeuronSet
from neuronspec.models.sites import adapter_for
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import MOE_ARCHITECTURES, tiny_model

TEXTS = ["the cat sat on the mat", "a dog barks at night", "hello world, hello again",
         "neurons fire together", "short", "zz top plays the blues", "one two three four five", "x y"]
FAST = EnhanceSettings(lr=1e-2, effective_batch=4, micro_batch=2, seq_len=24, epochs=2)
# ffn neurons of every expert (and, on qwen2_moe, shared-expert neurons 32..47) in two layers, plus attention
NEURONS = NeuronSet.from_dict({"ffn": {0: [1, 5, 11, 17, 30, 40, 47], 2: [2, 24, 45]}, "attn.v": {1: [3, 9]}})


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _owned(model) -> dict[str, torch.Tensor]:
    """{param name: bool mask of what NEURONS own}, from the experts' layout written out by hand."""
    params = dict(model.named_parameters())
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    layout = adapter_for(model).expert_layout(model.config)
    width = layout.width
    for site, layer, idx in NEURONS.items():
        pre = f"model.layers.{layer}."
        if site == "attn.v":
            masks[pre + "self_attn.v_proj.weight"][idx] = True
            if pre + "self_attn.v_proj.bias" in masks:
                masks[pre + "self_attn.v_proj.bias"][idx] = True
            continue
        for n in idx.tolist():
            e, j = divmod(n, width)
            if e < layout.num_experts:
                masks[pre + "mlp.experts.gate_up_proj"][e, j] = True
                masks[pre + "mlp.experts.gate_up_proj"][e, width + j] = True
                masks[pre + "mlp.experts.down_proj"][e, :, j] = True
            else:
                s = n - layout.num_experts * width
                masks[pre + "mlp.shared_expert.gate_proj.weight"][s] = True
                masks[pre + "mlp.shared_expert.up_proj.weight"][s] = True
                masks[pre + "mlp.shared_expert.down_proj.weight"][:, s] = True
    return masks


@torch.no_grad()
def _logits(model, tok) -> torch.Tensor:
    batch = next(iter_batches(encode(tok, TEXTS[:4], 24), batch_size=4, pad_id=0))
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_gradients_of_expert_slices_equal_full_autograd(arch, tok):
    """One backward through the taps gives exactly the selected slices of the gradient plain autograd
    computes on the unfrozen model (no clipping, no step)."""
    model = tiny_model(arch)
    ref = copy.deepcopy(model)
    batch = next(iter_batches(encode(tok, TEXTS[:4], 24), batch_size=4, pad_id=0))
    slots = _make_slots(model, NEURONS)
    for p in model.parameters():
        p.requires_grad_(False)
    handles = _register_taps(model, slots)
    nll, n = nll_sum(model, batch.input_ids, batch.attention_mask, chunk_tokens=7)
    (nll / n).backward()
    for h in handles:
        h.remove()
    ref_nll, _ = nll_sum(ref, batch.input_ids, batch.attention_mask, chunk_tokens=7)
    (ref_nll / n).backward()
    torch.testing.assert_close(nll, ref_nll, rtol=0, atol=0)  # the taps do not change the forward
    params, owned = dict(ref.named_parameters()), _owned(ref)
    assert {s.name for s in slots} == {name for name, m in owned.items() if m.any()}
    for s in slots:
        full = params[s.name].grad
        if s.name.endswith("gate_up_proj"):  # rows (e, r) in sorted order
            expected = torch.stack([full[e, r] for e, r in s.coords.tolist()])
        elif s.name.endswith("experts.down_proj"):  # columns down_proj[e][:, j], one per row
            expected = torch.stack([full[e, :, j] for e, j in s.coords.tolist()])
        else:
            expected = full.index_select(s.dim, s.coords)
        assert s.compact.grad.shape == expected.shape, s.name
        torch.testing.assert_close(s.compact.grad, expected, rtol=1e-5, atol=1e-8, msg=s.name)
        assert s.compact.grad.abs().sum() > 0, s.name
    expert_rows = sum(len(s.coords) for s in slots if s.name.endswith("gate_up_proj"))
    assert expert_rows == 2 * sum(len(s.coords) for s in slots if s.name.endswith("experts.down_proj")) > 0


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_only_the_selected_expert_slices_change(arch, tok):
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.named_parameters()}
    result = train_neurons(model, tok, TEXTS, NEURONS, FAST, restore=False)
    owned = _owned(model)
    for name, p in model.named_parameters():
        same = p.detach() == before[name]
        assert same[~owned[name]].all(), f"{name} changed outside the set"
        if owned[name].any():
            assert not same[owned[name]].all(), f"{name}: the set's slices did not train"
    assert result.trainable_params == sum(int(m.sum()) for m in owned.values())
    # AdamW: two float32 moments per trained value and a step counter per tensor, nothing for the rest
    assert result.optimizer_state_bytes == 2 * 4 * result.trainable_params + 4 * len(result.delta)
    assert any(isinstance(e.dim, tuple) for e in result.delta.entries.values())


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_trained_model_equals_base_with_delta_and_export(arch, tok, tmp_path: Path):
    model = tiny_model(arch)
    base = copy.deepcopy(model)
    base_logits = _logits(base, tok)
    trained = train_neurons(copy.deepcopy(model), tok, TEXTS, NEURONS, FAST, restore=False)
    result = train_neurons(model, tok, TEXTS, NEURONS, FAST)  # restore=True: base untouched
    assert result.delta.equal(trained.delta)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(), strict=True))
    in_place = copy.deepcopy(model)
    for n, e in trained.delta.entries.items():  # the trained weights, written by hand from the delta
        p = dict(in_place.named_parameters())[n]
        with torch.no_grad():
            for i, coords in enumerate(e.indices.tolist()):
                if not isinstance(e.dim, tuple):
                    p.select(e.dim, coords).copy_(e.values.select(e.dim, i))
                elif e.dim == (0, 1):
                    p[coords[0], coords[1]] = e.values[i]
                else:
                    p[coords[0], :, coords[1]] = e.values[i]
    want = _logits(in_place, tok)
    assert not torch.equal(want, base_logits)
    with apply_delta(model, result.delta):
        torch.testing.assert_close(_logits(model, tok), want, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model, tok), base_logits, rtol=0, atol=0)  # restored on exit
    saved = Delta.load(result.delta.save(tmp_path / "d.safetensors"))
    assert saved.equal(result.delta)
    out = export_model(model, tok, saved, tmp_path / "enhanced")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(reloaded, tok), want, rtol=0, atol=0)


MOE_ENHANCE_STUDY = """\
name: tiny-moe-enhance
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn], epsilon: {{quantile: 0.8}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: tune, enhance: {{neurons: specific, corpus: detect, docs: 6, languages: [fr], lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
  - {{name: tune-random, enhance: {{random_like: tune, corpus: detect, docs: 6, lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 20}}
"""


def test_a_study_enhances_expert_ffn_neurons(tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An enhance arm on PLND's ffn (expert) neurons of a tiny Mixtral, and its random control, run
    in a study; the arm's delta is expert slices and changes the trained language's perplexity."""
    from tiny_studies import make_corpus

    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.runner import run_plan
    from neuronspec.plan.store import Store
    from neuronspec.report.model import to_json
    from neuronspec.report.results import collect
    from neuronspec.spec import load_study

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    tiny_model("mixtral").save_pretrained(folder)
    tok.save_pretrained(folder)
    path = tmp_path / "study.yaml"
    path.write_text(MOE_ENHANCE_STUDY.format(model=folder, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    loaded = load_study(path)
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study)
    results = to_json(collect(plan, store))
    tune, random = results["enhance"]["tune/fr"], results["enhance"]["tune-random/fr"]
    assert tune["neurons"] == random["neurons"] > 0
    delta = Delta.load(store.get(plan.stages["enhance/tune/fr"].key).file("delta.safetensors"))
    assert delta.entries and all(name.endswith(("experts.gate_up_proj", "experts.down_proj")) for name in delta.entries)
    cells = {(c["arm"], c["mask_lang"], c["lang"]): c["value"] for c in results["evaluations"]["ppl"]["cells"]}
    assert cells[("tune", "fr", "fr")] != cells[(None, None, "fr")]


def test_expert_delta_entries_are_validated() -> None:
    from neuronspec.enhance import DeltaEntry

    model = tiny_model("mixtral")  # gate_up_proj [4, 24, 32]
    name = "model.layers.0.mlp.experts.gate_up_proj"
    ok = DeltaEntry((0, 1), torch.tensor([[3, 23]]), torch.ones(1, 32))
    with apply_delta(model, Delta({name: ok})):
        assert torch.equal(dict(model.named_parameters())[name][3, 23], torch.ones(32))
    with pytest.raises(ValueError, match="out of range for size 24 along dim 1"):
        apply_delta(model, Delta({name: DeltaEntry((0, 1), torch.tensor([[3, 24]]), torch.ones(1, 32))})).__enter__()
    with pytest.raises(ValueError, match="do not fit"):
        apply_delta(model, Delta({name: DeltaEntry((0, 2), torch.tensor([[3, 5]]), torch.ones(1, 32))})).__enter__()
    with pytest.raises(ValueError, match=r"indices must be \[k, 2\]"):
        DeltaEntry((0, 1), torch.tensor([3, 5]), torch.ones(2, 32))


def test_bfloat16_experts_train_with_a_float32_master(tok) -> None:
    """(Widths of 16: transformers' grouped expert matmul needs 16-byte strides in bfloat16.)"""
    model = tiny_model("mixtral", intermediate_size=16).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.named_parameters()}
    r = train_neurons(model, tok, TEXTS, NeuronSet.from_dict({"ffn": {0: [1, 20, 50]}}), FAST, restore=False)
    assert all(e.values.dtype == torch.bfloat16 for e in r.delta.entries.values())
    assert all(torch.isfinite(torch.tensor(r.losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}
