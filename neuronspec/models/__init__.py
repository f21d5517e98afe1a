"""Models: loading, the per-architecture site registry, neuron sets and how they are applied.

Public API (other layers import from here or from the submodules named below):

- ``sites``: SITES, Dims, site_width, kv_group, Adapter, adapter_for, register_adapter
- ``masks``: NeuronSet, deactivate, zeroed, zero_weights
- ``ablation``: ActivationMeans, activation_means, mean_ablated
- ``attention``: capture_attention, additive_mask
- ``forward``: encode, iter_batches, iter_packed, can_pack, Batch, hidden_forward
- ``loading``: load_model, LoadedModel, list_embedded
"""

# Imported lazily (PEP 562): planning a cached study must not pay for importing torch.
_EXPORTS = {
    "ActivationMeans": "ablation",
    "activation_means": "ablation",
    "mean_ablated": "ablation",
    "additive_mask": "attention",
    "capture_attention": "attention",
    "Batch": "forward",
    "encode": "forward",
    "hidden_forward": "forward",
    "iter_batches": "forward",
    "iter_packed": "forward",
    "can_pack": "forward",
    "DEFAULT_MODEL": "loading",
    "LoadedModel": "loading",
    "MissingDependency": "loading",
    "list_embedded": "loading",
    "load_model": "loading",
    "NeuronSet": "masks",
    "deactivate": "masks",
    "zero_weights": "masks",
    "zeroed": "masks",
    "SITES": "sites",
    "Adapter": "sites",
    "Dims": "sites",
    "GatedAdapter": "sites",
    "HookPoint": "sites",
    "SiteShapeError": "sites",
    "UnsupportedArchitecture": "sites",
    "WeightSlice": "sites",
    "adapter_for": "sites",
    "kv_group": "sites",
    "register_adapter": "sites",
    "site_width": "sites",
}


def __getattr__(name: str):  # noqa: ANN202
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "ActivationMeans",
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
    "activation_means",
    "adapter_for",
    "additive_mask",
    "can_pack",
    "capture_attention",
    "deactivate",
    "encode",
    "hidden_forward",
    "iter_batches",
    "iter_packed",
    "kv_group",
    "list_embedded",
    "load_model",
    "mean_ablated",
    "register_adapter",
    "site_width",
    "zero_weights",
    "zeroed",
]
