"""Float32 CPU linears through oneDNN: float32-accurate, used only where it applies, and installed by load_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neuronspec.models import onednn
from neuronspec.models.loading import load_model
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not used on this machine (not x86 or no oneDNN)")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that reach the oneDNN op."""
    calls: list[int] = []
    real = onednn._OP

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(onednn, "_OP", counted)
    return calls


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 48), (0, 48), (3, 9, 48)])
def test_linear_is_float32_accurate(shape: tuple[int, ...], bias: bool, spy: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    if len(shape) == 3 and shape[1] == 9:
        x = x[:, ::2]  # a non-contiguous input
    w, b = torch.randn(33, 48, generator=gen), (torch.randn(33, generator=gen) if bias else None)
    got = onednn.linear(x, w, b)
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    scale = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert got.dtype == torch.float32 and got.shape == exact.shape and bool(spy) == (x.numel() > 0)
    # float32 with float32 accumulation: within a few ulps of the sum of |terms|
    assert ((got.double() - exact).abs() <= 48 * 2**-24 * scale + 1e-30).all()


def test_linear_falls_back_where_onednn_does_not_apply(spy: list[int]) -> None:
    w = torch.randn(4, 6, requires_grad=True)
    x = torch.randn(3, 6)
    out = onednn.linear(x, w)  # a gradient is needed: the oneDNN op has no backward
    out.sum().backward()
    assert w.grad is not None and torch.equal(w.grad, x.sum(0).expand(4, 6))
    with torch.no_grad():
        onednn.linear(x.double(), w.double())  # not float32
        onednn.linear(x.bfloat16(), w.bfloat16())
        onednn.linear(x[:1], w)  # one row: MKL is faster there, except for an unembedding
    assert not spy
    if onednn.available():
        with torch.no_grad():
            onednn.linear(torch.randn(1, 1, 6), torch.randn(96, 6))
        assert spy


@needs_onednn
def test_use_onednn_swaps_plain_linears_and_keeps_hooks_and_in_place_zeroing(spy: list[int]) -> None:
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), Custom(8, 8), nn.Linear(8, 3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 6)
    with torch.no_grad():
        before = model(x)
        assert onednn.use_onednn(model) == 2
        assert [type(m) for m in model] == [onednn.OneDNNLinear, nn.ReLU, Custom, onednn.OneDNNLinear]
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        seen: list[torch.Tensor] = []
        model[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
        after = model(x)
        assert len(spy) == 2 and len(seen) == 1
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
        model[3].weight[1] = 0.0  # masks zero weights in place: the next call must see it
        model[3].bias[1] = 0.0
        assert model(x)[:, 1].eq(0).all()


def test_turned_off_by_environment(monkeypatch: pytest.MonkeyPatch, spy: list[int]) -> None:
    monkeypatch.setenv("NEURONSPEC_ONEDNN", "0")
    model = nn.Sequential(nn.Linear(4, 4))
    assert not onednn.available() and onednn.use_onednn(model) == 0 and type(model[0]) is nn.Linear
    with torch.no_grad():
        onednn.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert not spy


@needs_onednn
def test_load_model_uses_onednn_and_masks_still_act(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    reference = tiny_model("llama")
    reference.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    linears = [m for m in lm.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is onednn.OneDNNLinear for m in linears)
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    neurons = NeuronSet.from_dict({"ffn": {1: [0, 3, 5]}})
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        with deactivate(lm.model, neurons), deactivate(reference, neurons):
            masked, expected = lm.model(ids).logits, reference(ids).logits
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)
    assert (masked - lm.model(ids).logits).abs().max() > 1e-3  # the mask changed something


def test_kinds_that_load_the_model_are_keyed_by_how_it_is_loaded() -> None:
    from neuronspec.plan.kinds import KINDS, code_fingerprints

    fingerprints = code_fingerprints()
    for name, kind in KINDS.items():
        assert ("neuronspec/models/onednn.py" in fingerprints[name].parts) == kind.loads_model, name
