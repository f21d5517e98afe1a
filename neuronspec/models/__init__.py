"""Models: loading, the per-architecture site registry, neuron sets and how they are applied.

Public API (other layers import from here or from the submodules named below):

- ``sites``: SITES, Dims, site_width, kv_group, Adapter, adapter_for, register_adapter
- ``masks``: NeuronSet, deactivate, zero_weights
- ``attention``: capture_attention, additive_mask
- ``forward``: encode, iter_batches, Batch, hidden_forward
- ``loading``: load_model, LoadedModel, list_embedded
"""

from .attention import additive_mask, capture_attention
from .forward import Batch, encode, hidden_forward, iter_batches
from .loading import DEFAULT_MODEL, LoadedModel, MissingDependency, list_embedded, load_model
from .masks import NeuronSet, deactivate, zero_weights
from .sites import (
    SITES,
    Adapter,
    Dims,
    GatedAdapter,
    HookPoint,
    SiteShapeError,
    UnsupportedArchitecture,
    WeightSlice,
    adapter_for,
    kv_group,
    register_adapter,
    site_width,
)

__all__ = [
    "DEFAULT_MODEL",
    "SITES",
    "Adapter",
    "Batch",
    "Dims",
    "GatedAdapter",
    "HookPoint",
    "LoadedModel",
    "MissingDependency",
    "NeuronSet",
    "SiteShapeError",
    "UnsupportedArchitecture",
    "WeightSlice",
    "adapter_for",
    "additive_mask",
    "capture_attention",
    "deactivate",
    "encode",
    "hidden_forward",
    "iter_batches",
    "kv_group",
    "list_embedded",
    "load_model",
    "register_adapter",
    "site_width",
    "zero_weights",
]
