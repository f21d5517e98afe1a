"""A neuron set as tidy rows, one per neuron: where a reader looks up which neurons a set holds.

A mixture-of-experts model numbers its ffn neurons flat, expert after expert (models/moe.py);
a row of such a site also says which expert the neuron belongs to and its index inside it, so
nobody has to redo the division by hand. The layout comes from the run's ``dims["experts"]`` (or
the model's adapter), so a run's record is enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neuronspec.models.masks import NeuronSet
from neuronspec.models.moe import ExpertLayout


@dataclass(frozen=True)
class NeuronRow:
    site: str
    layer: int
    neuron: int  # the flat index every NeuronSet and mask uses
    expert: int | None  # MoE ffn only: the routed expert, or num_experts for the shared one
    shared: bool | None  # MoE ffn only: the neuron belongs to the shared expert
    index: int | None  # MoE ffn only: the neuron's index inside its expert


def layout_of(dims: Mapping[str, Any]) -> ExpertLayout | None:
    """The expert layout a run's dims record (None: a dense model, or a record from before layouts were kept)."""
    experts = dims.get("experts")
    return None if experts is None else ExpertLayout(**experts)


def expert_counts(neurons: NeuronSet, layout: ExpertLayout) -> dict[int, dict[int, int]]:
    """layer -> expert -> how many of the set's ffn neurons it holds (the shared expert is ``num_experts``)."""
    out: dict[int, dict[int, int]] = {}
    for layer in neurons.layers("ffn"):
        per = out.setdefault(layer, {})
        for n in neurons.indices("ffn", layer).tolist():
            e, _ = layout.locate(n)
            per[e] = per.get(e, 0) + 1
    return {layer: dict(sorted(per.items())) for layer, per in out.items()}


def neuron_rows(neurons: NeuronSet, layout: ExpertLayout | None) -> list[NeuronRow]:
    """One row per neuron of `neurons`, by site, layer and index; ffn rows located in their expert under `layout`."""
    rows = []
    for site, layer, idx in neurons.items():
        for n in idx.tolist():
            if site == "ffn" and layout is not None:
                e, j = layout.locate(n)
                rows.append(NeuronRow(site, layer, n, e, e == layout.num_experts, j))
            else:
                rows.append(NeuronRow(site, layer, n, None, None, None))
    return rows
