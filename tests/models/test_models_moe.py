"""Mixture-of-experts (Mixtral) expert neurons: numbering, and what is refused rather than guessed.

PLND against switching each expert neuron off (tests/methods/test_plnd_bruteforce.py), hooks
against zeroed weights and exports (test_models_masks.py, test_models_export.py) and a study
(tests/plan/test_architectures.py) run Mixtral through the shared parametrisations.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.enhance import selected_slices
from neuronspec.models.export import export_deactivated
from neuronspec.models.masks import NeuronSet, zeroed
from neuronspec.models.moe import expert_of
from neuronspec.models.sites import adapter_for, site_width
from neuronspec.models.tiny import tiny_model


def test_ffn_neurons_are_every_experts_intermediate_coordinates() -> None:
    m = tiny_model("mixtral")
    a = adapter_for(m)
    cfg = m.config
    assert site_width(a.dims(cfg), "ffn") == cfg.num_local_experts * cfg.intermediate_size
    expert, j = expert_of(torch.tensor([0, 11, 12, 47]), cfg.intermediate_size)
    assert expert.tolist() == [0, 0, 1, 3] and j.tolist() == [0, 11, 0, 11]
    down = m.model.layers[1].mlp.experts.down_proj  # [E, H, I]
    assert torch.equal(a.down_weight(m, 1)[:, 2 * cfg.intermediate_size + 5], down[2, :, 5])


def test_a_trained_expert_neuron_owns_its_gate_up_rows_and_down_column() -> None:
    m = tiny_model("mixtral")  # 4 experts of width 12: neuron 27 is expert 2, index 3
    got = selected_slices(m, NeuronSet.from_dict({"ffn": {0: [27]}}))
    experts = "model.layers.0.mlp.experts."
    assert set(got) == {experts + "gate_up_proj", experts + "down_proj"}
    assert got[experts + "gate_up_proj"][0] == (0, 1) and got[experts + "gate_up_proj"][1].tolist() == [[2, 3], [2, 15]]
    assert got[experts + "down_proj"][0] == (0, 2) and got[experts + "down_proj"][1].tolist() == [[2, 3]]
    assert selected_slices(m, NeuronSet.from_dict({"attn.v": {0: [3]}}))  # attention neurons train as in Llama
    q = tiny_model("qwen2_moe")  # 4 experts of width 8, then the shared expert's 16: neuron 40 is shared #8
    shared = "model.layers.0.mlp.shared_expert."
    got = selected_slices(q, NeuronSet.from_dict({"ffn": {0: [40]}}))
    assert {n: (d, c.tolist()) for n, (d, c) in got.items()} == {
        shared + "gate_proj.weight": (0, [8]), shared + "up_proj.weight": (0, [8]), shared + "down_proj.weight": (1, [8])}


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_expert_layout_names_the_weights_a_neuron_owns(arch: str) -> None:
    """(expert, index) of every flat ffn neuron is where zeroing that neuron zeroes the real modules'
    rows: expert e's gate row j and up row I + j, or the shared expert's up row j."""
    m = tiny_model(arch)
    layout = adapter_for(m).expert_layout(m.config)
    mlp = m.model.layers[1].mlp
    assert layout.num_experts * layout.width + layout.shared == adapter_for(m).dims(m.config).intermediate
    for n in range(layout.num_experts * layout.width + layout.shared):
        e, j = layout.locate(n)
        with zeroed(m, NeuronSet.from_dict({"ffn": {1: [n]}})):
            rows = (mlp.experts.gate_up_proj == 0).all(-1)  # [E, 2I]
            shared_rows = (mlp.shared_expert.up_proj.weight == 0).all(-1) if layout.shared else None
            if e < layout.num_experts:
                assert rows.nonzero().tolist() == [[e, j], [e, layout.width + j]], n
                assert layout.label(n) == f"expert {e} #{j}"
            else:
                assert not rows.any() and shared_rows.nonzero().flatten().tolist() == [j], n
                assert layout.label(n) == f"shared #{j}"
    with pytest.raises(ValueError, match="out of range"):
        layout.locate(layout.num_experts * layout.width + layout.shared)


def test_export_lists_expert_neurons_by_expert_and_index(tmp_path) -> None:  # noqa: ANN001
    import csv

    m = tiny_model("qwen2_moe")  # 4 experts of 8, then a shared expert of 16
    neurons = NeuronSet.from_dict({"ffn": {0: [3, 8 * 2 + 5, 32 + 1]}, "attn.v": {2: [4]}})
    out = export_deactivated(m, None, neurons, tmp_path / "arm")
    with (out / "neuronspec_neurons.csv").open() as f:
        rows = [(r["site"], r["layer"], r["neuron"], r["expert"], r["shared"], r["index"]) for r in csv.DictReader(f)]
    assert rows == [("ffn", "0", "3", "0", "False", "3"), ("ffn", "0", "21", "2", "False", "5"),
                    ("ffn", "0", "33", "4", "True", "1"), ("attn.v", "2", "4", "", "", "")]


def test_a_random_control_of_expert_neurons_is_matched_per_expert() -> None:
    """`blocks` draws as many neurons in each expert (and the shared one) as the set has there;
    one block is the plain per-layer draw, bit for bit."""
    from neuronspec.models.masks import NeuronSet
    from neuronspec.models.sites import Dims

    dims = Dims(num_layers=2, hidden=8, intermediate=4 * 6 + 5, heads=2, kv_heads=1, head_dim=4)
    edges = [0, 6, 12, 18, 24, 29]  # four experts of 6 neurons, a shared expert of 5
    target = NeuronSet({"ffn": {0: torch.tensor([0, 1, 2, 13, 25, 26]), 1: torch.tensor([7, 8])}})

    def per_block(ns: NeuronSet, layer: int) -> list[int]:
        (t,) = [t for _, lay, t in ns.items() if lay == layer]
        return [int(((t >= lo) & (t < hi)).sum()) for lo, hi in zip(edges, edges[1:])]

    for seed in range(20):
        drawn = target.random_like(dims, seed, exclude=target, blocks={"ffn": edges})
        assert per_block(drawn, 0) == [3, 0, 1, 0, 2] and per_block(drawn, 1) == [0, 2, 0, 0, 0]
        assert (drawn & target).count() == 0 and drawn.count() == target.count()
    plain = [target.random_like(dims, seed) for seed in range(20)]
    assert plain == [target.random_like(dims, seed, blocks={"ffn": [0, 29]}) for seed in range(20)]
    assert any(per_block(p, 1) != [0, 2, 0, 0, 0] for p in plain)  # unmatched draws wander across experts
