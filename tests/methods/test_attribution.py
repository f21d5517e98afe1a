"""Integrated Gradients completeness and the cheap |activation|·‖W_down[:,k]‖ score."""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.activations import activation_statistics
from neuronspec.methods.attribution import (
    CompletenessWarning,
    activation_norm_scores,
    adaptive_integral,
    adaptive_quadrature,
    initial_counts,
    integrated_gradients,
    probe_edges,
    quadrature,
)
from neuronspec.models.forward import iter_batches
from neuronspec.models.sites import adapter_for
from neuronspec.models.tiny import tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15]]


def _model(arch: str):
    # larger weights than the default tiny init so zeroing a layer changes f visibly;
    # float64 so the check measures the quadrature, not float32 rounding of f
    return tiny_model(arch, initializer_range=0.3).double()


def _relative_gap(res) -> float:
    """Worst |Σ IG − (f(a) − f(0))| relative to |f(a) − f(0)| (floored at 0.1 nats: where zeroing a
    layer barely moves f, f may still rise and fall along the path, and 1e-3 nats is the bar)."""
    delta = (res.f_input[:, None] - res.f_baseline).double().abs()
    assert float(delta.max()) > 0.5  # the test would be vacuous otherwise
    return float((res.completeness_gap.abs() / delta.clamp_min(0.1)).max())


@pytest.mark.parametrize("arch,rule,steps", [("llama", "adaptive", 128), ("gemma3_text", "adaptive", 128),
                                             ("gpt2", "adaptive", 128), ("bloom", "adaptive", 128),
                                             ("phi3", "adaptive", 128), ("gpt_neox", "adaptive", 128),
                                             ("llama", "gausslegendre", 16), ("gemma3_text", "geometric", 64)])
def test_completeness_sequence_logprob(arch: str, rule: str, steps: int) -> None:
    model = _model(arch)
    res = integrated_gradients(model, iter_batches(DOCS, batch_size=2, pad_id=0), steps=steps, rule=rule,
                               step_batch=64)
    assert res.attributions.shape == (len(DOCS), 3, adapter_for(model).dims(model.config).intermediate)
    assert _relative_gap(res) < 0.01, (arch, rule)
    assert res.to_json()["max_abs_completeness_gap"] < 0.05


def test_completeness_next_token_and_step_batching() -> None:
    model = _model("qwen2")
    batches = list(iter_batches(DOCS, batch_size=3, pad_id=0))
    one = integrated_gradients(model, batches, layers=[1], steps=64, step_batch=64, targets=[10, 11, 12])
    chunked = integrated_gradients(model, batches, layers=[1], steps=64, step_batch=7, targets=[10, 11, 12])
    assert torch.allclose(one.attributions, chunked.attributions, atol=1e-6)
    assert _relative_gap(one) < 0.01
    # f(a) is the next-token log-prob after the last real token
    with torch.no_grad():
        for i, ids in enumerate(DOCS):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert float(one.f_input[i]) == pytest.approx(float(torch.log_softmax(logits.double(), -1)[10 + i]), abs=1e-5)


def test_gemma_needs_the_geometric_rule() -> None:
    """Gemma's post-feedforward RMSNorm makes f(α·a) flat except near α = 0: an even grid fails loudly."""
    model = _model("gemma3_text")
    with pytest.warns(CompletenessWarning):
        integrated_gradients(model, iter_batches(DOCS, batch_size=3, pad_id=0), layers=[1], steps=16,
                             rule="gausslegendre")


def test_quadrature_rules() -> None:
    for rule in ("gausslegendre", "riemann_middle", "geometric"):
        x, w = quadrature(32, rule)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-9) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert float((w * x ** 3).sum()) == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(ValueError):
        quadrature(8, "trapezoid")


def test_adaptive_rule_places_and_refines_nodes_where_f_moves() -> None:
    edges = probe_edges(9)  # 0, 1e-8, 1e-7, ..., 1
    assert edges.numel() == 10 and float(edges[1]) == pytest.approx(1e-8) and float(edges[-1]) == 1.0
    f = torch.zeros(10)
    f[7:] = 1.0  # all change between 1e-3 and 1e-2 (panel 6)
    counts = initial_counts(edges, f, 40)
    assert int(counts.sum()) == 40 and int(counts.min()) == 1
    assert int(counts[6]) == 1 + 16 and int(counts[8]) == 1 + 14  # half by |Δf|, most of the rest to [0.1, 1]
    x, w = adaptive_quadrature(edges, f, 40)
    assert x.numel() == 40 and float(w.sum()) == pytest.approx(1.0, abs=1e-12)

    # a sharp integrand: f(α) = tanh((α − 3e-3) / 3e-4), the kind of peak real Gemma layers show
    f_of = lambda a: torch.tanh((a - 3e-3) / 3e-4)  # noqa: E731
    g = lambda a: (1 - torch.tanh((a - 3e-3) / 3e-4) ** 2) / 3e-4  # noqa: E731
    exact = float(f_of(torch.tensor(1.0)) - f_of(torch.tensor(0.0)))
    calls: list[int] = []

    def integrate(panels):
        out = []
        for lo, hi, n in panels:
            xs, ws = quadrature(n, "gausslegendre")
            calls.append(n)
            out.append((ws * (hi - lo) * g(lo + xs * (hi - lo))).sum().view(1, 1))
        return torch.stack(out)

    edges = probe_edges(33)
    got = adaptive_integral(edges, f_of(edges), 128, integrate)
    assert float(got.sum()) == pytest.approx(exact, rel=1e-3) and sum(calls) <= 128
    xg, wg = quadrature(128, "gausslegendre")  # the same budget on an even grid
    assert abs(float((wg * g(xg)).sum()) - exact) > 1e-2


def test_activation_norm_scores() -> None:
    model = tiny_model("gpt2")
    stats = activation_statistics(model, iter_batches(DOCS, batch_size=3, pad_id=0), poolings=("mean_abs",))
    scores = activation_norm_scores(model, stats.pooled["mean_abs"])
    layer1 = model.transformer.h[1].mlp.c_proj.weight  # Conv1D: [in = neurons, out = hidden]
    expected = stats.per_layer("mean_abs")[:, 1] * layer1.detach().norm(dim=1)
    assert torch.allclose(scores[:, 1], expected, atol=1e-6)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_expert_neurons(arch: str) -> None:
    """Expert neurons: at α = 1 each neuron's integrand Σ_t a_tk ∂f/∂a_tk equals the finite difference of
    f when the real model's weights scale that neuron (its up row, a linear factor of a); the last layer
    (no router downstream) is complete, earlier ones warn about routing jumps."""
    from neuronspec.methods.attribution_moe import ExpertScale

    model = tiny_model(arch, initializer_range=0.3)  # grouped_mm experts run in float32, not float64
    adapter = adapter_for(model)
    layout = adapter.expert_layout(model.config)
    ids = torch.tensor([DOCS[0]])

    def logprob() -> torch.Tensor:  # f: the teacher-forced log-probability of the document's tokens
        return torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).sum()

    def f() -> float:
        with torch.no_grad():
            return float(logprob())

    scale = ExpertScale(adapter)
    handles = scale.attach(model, 1)
    scale.alpha, scale.grad_leaf = torch.ones(1), True
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(logprob(), scale.leaf)
    integrand = (grad * scale.clean)[0].sum(0)  # [width]
    for h in handles:
        h.remove()
    mlp = model.model.layers[1].mlp
    routed_n = layout.num_experts * layout.width
    chosen = [int(n) for n in integrand.abs().argsort(descending=True)[:4]] + ([routed_n + 3] if layout.shared else [])
    for n in chosen:
        e, j = layout.locate(n)
        row = mlp.experts.gate_up_proj[e, layout.width + j] if e < layout.num_experts else mlp.shared_expert.up_proj.weight[j]
        keep, eps, ends = row.detach().clone(), 1e-2, []
        for sign in (1, -1):
            with torch.no_grad():
                row.mul_(1 + sign * eps)
            ends.append(f())
            with torch.no_grad():
                row.copy_(keep)
        assert (ends[0] - ends[1]) / (2 * eps) == pytest.approx(float(integrand[n]), rel=2e-2, abs=1e-4), (n, e, j)
    assert any(abs(float(integrand[n])) > 1e-2 for n in chosen)  # the check above is not all zeros

    last = integrated_gradients(model, iter_batches(DOCS, batch_size=2, pad_id=0), layers=[2], steps=128, step_batch=64)
    assert last.attributions.shape == (len(DOCS), 1, routed_n + layout.shared)
    assert _relative_gap(last) < 1e-3
    with pytest.warns(CompletenessWarning, match="router"):
        integrated_gradients(model, iter_batches(DOCS, batch_size=3, pad_id=0), layers=[0], steps=64, step_batch=64)
