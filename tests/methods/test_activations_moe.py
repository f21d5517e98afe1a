"""Expert-neuron activation statistics (Mixtral, Qwen2-MoE) against a naive per-token loop.

The loop re-derives every expert neuron from the real modules one token at a time: the block's
router (``mlp.gate``) picks the token's experts, neuron j of expert e is act(x·g_j)·(x·u_j) from
that expert's gate and up rows, and each expert's values are checked to be what the real experts
module turns into its output (so the halves and the routing are the model's, not assumed). A
neuron is 0 on tokens its expert was not routed (docs/methods.md, "Expert neurons").
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.activations import activation_statistics
from neuronspec.models.forward import iter_batches, iter_packed
from neuronspec.models.tiny import MOE_ARCHITECTURES, tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15], [1, 20, 21]]


def _naive(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(neuron values, gate events) [T, L, W] of one document, token by token through the real modules."""
    values, events, _ = _naive_all(model, ids)
    return values, events


def _naive_all(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(neuron values, gate events, gate activations act(x·gate)) [T, L, W] of one document."""
    blocks = [layer.mlp for layer in model.model.layers]
    inputs: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0][0].detach().clone()))
               for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    values, events, gates = [], [], []
    for i, block in enumerate(blocks):
        experts = block.experts
        n_exp, two_i, _ = experts.gate_up_proj.shape
        width = two_i // 2
        shared = getattr(block, "shared_expert", None)
        total = n_exp * width + (shared.down_proj.in_features if shared is not None else 0)
        v = torch.zeros(len(ids), total)
        g = torch.zeros(len(ids), total, dtype=torch.bool)
        act = torch.zeros(len(ids), total)
        for t in range(len(ids)):
            x = inputs[i][t]
            with torch.no_grad():
                _, _, chosen = block.gate(x[None])
                for e in chosen[0].tolist():
                    for j in range(width):
                        z_gate = float(x @ experts.gate_up_proj[e, j])
                        z_up = float(x @ experts.gate_up_proj[e, width + j])
                        v[t, e * width + j] = float(experts.act_fn(torch.tensor(z_gate))) * z_up
                        g[t, e * width + j] = z_gate > 0
                        act[t, e * width + j] = float(experts.act_fn(torch.tensor(z_gate)))
                    # the real experts module, sent this token to expert e alone with weight 1, outputs W_down[e] a
                    alone = experts(x[None], torch.tensor([[e]]), torch.tensor([[1.0]]))[0]
                    assert torch.allclose(alone, experts.down_proj[e] @ v[t, e * width:(e + 1) * width], atol=1e-5)
                if shared is not None:
                    a = shared.act_fn(shared.gate_proj(x)) * shared.up_proj(x)
                    assert torch.allclose(shared(x[None])[0], shared.down_proj(a), atol=1e-6)
                    v[t, n_exp * width:] = a
                    g[t, n_exp * width:] = shared.gate_proj(x) > 0
                    act[t, n_exp * width:] = shared.act_fn(shared.gate_proj(x))
        values.append(v)
        events.append(g)
        gates.append(act)
    return torch.stack(values, dim=1), torch.stack(events, dim=1), torch.stack(gates, dim=1)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_expert_statistics_equal_a_per_token_loop(arch: str, packed: bool) -> None:
    model = tiny_model(arch)
    batches = iter_packed(DOCS, batch_size=2, pad_id=0) if packed else iter_batches(DOCS, batch_size=3, pad_id=0)
    stats = activation_statistics(model, batches, poolings=("mean", "mean_abs", "last"),
                                  thresholds=(0.0, 0.01), gate_counts=True)
    naive = [_naive(model, ids) for ids in DOCS]
    counted = [v[1:] for v, _ in naive]  # the first token is skipped
    assert stats.width == counted[0].shape[-1]
    for n, v in enumerate(counted):
        assert torch.allclose(stats.per_layer("mean")[n], v.mean(0), atol=1e-6)
        assert torch.allclose(stats.per_layer("mean_abs")[n], v.abs().mean(0), atol=1e-6)
        assert torch.allclose(stats.per_layer("last")[n], naive[n][0][-1], atol=1e-6)
    tokens = torch.cat(counted)
    events = torch.cat([g[1:] for _, g in naive])
    assert stats.tokens == tokens.shape[0]
    assert torch.equal(stats.counts[0], (tokens > 0).sum(0))
    assert torch.equal(stats.counts[1], (tokens > 0.01).sum(0))
    assert torch.equal(stats.gate_counts, events.sum(0))
    # not every expert neuron fires on every token: routing leaves zeros the statistics must keep
    assert int((tokens == 0).sum()) > tokens.numel() // 4



@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_expert_gate_activations_equal_a_per_token_loop(arch: str) -> None:
    """Sharing Matters' event reads act(x·gate): per expert neuron, 0 where its expert was not routed."""
    model = tiny_model(arch)
    stats = activation_statistics(model, iter_batches(DOCS, batch_size=3, pad_id=0), poolings=("act_mean", "act_last", "mean"))
    for n, ids in enumerate(DOCS):
        values, _, act = _naive_all(model, ids)
        assert torch.allclose(stats.per_layer("act_mean")[n], act[1:].mean(0), atol=1e-6)
        assert torch.allclose(stats.per_layer("act_last")[n], act[-1], atol=1e-6)
        assert torch.allclose(stats.per_layer("mean")[n], values[1:].mean(0), atol=1e-6)  # the neuron is not the gate
        assert not torch.allclose(act[1:].mean(0), values[1:].mean(0), atol=1e-3)
