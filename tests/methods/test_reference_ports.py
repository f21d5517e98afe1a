"""The reference ports of benchmarks/references.py compute what its docstring says, checked
against direct counts and sums from plain forward hooks (tiny models, a second or two)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from references import LapeReference, LinguaFrancaReference, PlndReference, lape_rows  # noqa: E402

from neuronspec.models.sites import adapter_for  # noqa: E402
from neuronspec.models.tiny import tiny_model  # noqa: E402


def _docs() -> list[list[int]]:
    g = torch.Generator().manual_seed(2)
    return [[1] + torch.randint(4, 96, (n - 1,), generator=g).tolist() for n in (9, 14, 5, 21, 12)]


def _captured(model, ids: torch.Tensor, which: str) -> list[torch.Tensor]:  # noqa: ANN001
    """Per layer, the gate pre-activation (`gate`), up output (`up`) or down input (`down`) of a plain forward."""
    adapter, out = adapter_for(model.config), []
    layers = adapter.layers(model)

    def hook(module, inputs, output):  # noqa: ANN001, ANN202
        out.append((inputs[0] if which == "down" else output).detach())

    modules = [layer.mlp.gate_proj if which == "gate" else layer.mlp.up_proj if which == "up" else layer.mlp.down_proj
               for layer in layers]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_lape_port_counts_every_position_of_its_rows(arch: str) -> None:
    model = tiny_model(arch).eval()
    docs = _docs()
    rows, dropped = lape_rows(docs, 16)
    stream = [t for d in docs for t in d]
    assert rows.shape == (len(stream) // 16, 16) and dropped == len(stream) % 16
    assert rows.flatten().tolist() == stream[:rows.numel()]
    with torch.no_grad():
        plain = model(input_ids=rows, use_cache=False).logits
        counts = LapeReference(model).run(rows, batch_size=2)
        after = model(input_ids=rows, use_cache=False).logits
    assert torch.equal(plain, after)  # the MLPs' forward is restored
    gates = _captured(model, rows, "gate")
    expected = torch.stack([(g > 0).sum((0, 1)) for g in gates])  # act(z) > 0 ⇔ z > 0 for SiLU / GELU
    assert counts.n == rows.numel()
    assert torch.equal(counts.over_zero.long(), expected)
    act = torch.stack([model.model.layers[i].mlp.act_fn(g).float() for i, g in enumerate(gates)])
    torch.testing.assert_close(counts.moments[1], act.pow(2).sum((1, 2)), rtol=1e-4, atol=1e-5)


def test_linguafranca_port_sums_the_down_projection_input_over_tokens() -> None:
    model = tiny_model("llama").eval()
    docs = _docs()
    with torch.no_grad():
        vectors = LinguaFrancaReference(model).run(docs, pad_id=0)
    for ids, vec in zip(docs, vectors):
        expected = torch.cat([x[0].sum(0) for x in _captured(model, torch.tensor([ids]), "down")])
        torch.testing.assert_close(vec, expected, rtol=1e-4, atol=1e-5)


def test_plnd_port_intersects_per_document_top_k_of_abs_up() -> None:
    model = tiny_model("llama").eval()
    docs = _docs()
    k = 20
    with torch.no_grad():
        sets = PlndReference(model, k).run(docs, pad_id=0)
    tops = [[set(u[0].abs().sum(0).topk(k).indices.tolist()) for u in _captured(model, torch.tensor([ids]), "up")]
            for ids in docs]
    expected = {i: set.intersection(*(t[i] for t in tops)) for i in range(len(tops[0]))}
    assert sets == expected
    assert any(sets.values())  # not a vacuous comparison
