"""Mixture-of-experts (Mixtral) expert neurons: numbering, and what is refused rather than guessed.

PLND against switching each expert neuron off (tests/methods/test_plnd_bruteforce.py), hooks
against zeroed weights and exports (test_models_masks.py, test_models_export.py) and a study
(tests/plan/test_architectures.py) run Mixtral through the shared parametrisations.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.enhance import selected_slices
from neuronspec.models.masks import NeuronSet
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


def test_what_expert_neurons_do_not_support_yet_says_so() -> None:
    m = tiny_model("mixtral")
    with pytest.raises(NotImplementedError, match="training expert"):
        selected_slices(m, NeuronSet.from_dict({"ffn": {0: [3]}}))
    assert selected_slices(m, NeuronSet.from_dict({"attn.v": {0: [3]}}))  # attention neurons train as in Llama
