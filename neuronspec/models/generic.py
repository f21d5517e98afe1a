"""Families without an adapter of their own, recognised by their layout.

A decoder whose modules are named as Llama's (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm`` / ``post_attention_layernorm``, ``model.norm``,
``lm_head``) has Llama's sites whatever its ``model_type``: :class:`GenericGatedAdapter` serves it.
Structure alone does not show everything a site's meaning rests on, so the layout is checked
strictly - any extra module (a q/k norm, a post-sublayer norm, a fused projection) means the
family needs its own adapter - and :func:`~neuronspec.models.attention.capture_attention`
checks on the first call that the queries it hands out are the q projection's output under
the half-split rotary the q/k score assumes (:attr:`Adapter.verify_rotary`).
"""

from __future__ import annotations

from torch import nn

from .sites import Adapter, GatedAdapter, UnsupportedArchitecture

HOW_TO_ADD = ("To add an adapter: subclass neuronspec.models.sites.Adapter (or GatedAdapter for "
              "Llama-style module names), set model_types = ('your_type',), implement dims/base/layers/"
              "final_norm/ffn_down/ffn_in/attn_out/attention/projection, and call "
              "neuronspec.models.sites.register_adapter(YourAdapter) before loading the model.")

#: config fields the dims of a Llama-like family are read from
_CONFIG_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
#: child modules (name -> required) allowed in each part; anything else changes what a site means
_LAYER = {"self_attn": True, "mlp": True, "input_layernorm": True, "post_attention_layernorm": True}
_ATTENTION = {"q_proj": True, "k_proj": True, "v_proj": True, "o_proj": True, "rotary_emb": False}
_MLP = {"gate_proj": True, "up_proj": True, "down_proj": True, "act_fn": False}
_HARMLESS = (nn.Dropout, nn.Identity)


class GenericGatedAdapter(GatedAdapter):
    """Llama's sites for a family registered under no adapter; its layout is verified in :meth:`check`."""

    verify_rotary = True

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type

    def check(self, model: nn.Module):  # noqa: ANN201 - Dims, as Adapter.check
        problems = _layout_problems(model)
        if problems:
            raise UnsupportedArchitecture(
                f"model_type {self.model_type!r} has no neuron-site adapter and is not laid out as Llama "
                f"(which would need none):\n  " + "\n  ".join(problems[:8]) + f"\n{HOW_TO_ADD}")
        return super().check(model)


def _children(module: nn.Module, where: str, allowed: dict[str, bool]) -> list[str]:
    """What is missing from or extra in `module` against `allowed` (parameter-free dropouts are fine)."""
    names = dict(module.named_children())
    problems = [f"{where}.{name} not found" for name, required in allowed.items() if required and name not in names]
    extra = [name for name, child in names.items() if name not in allowed and not isinstance(child, _HARMLESS)]
    problems += [f"{where}.{name} ({type(names[name]).__name__}) is not part of Llama's layout" for name in extra]
    return problems


def _layout_problems(model: nn.Module) -> list[str]:
    base, layers = getattr(model, "model", None), getattr(getattr(model, "model", None), "layers", None)
    if base is None or not isinstance(layers, nn.ModuleList) or not len(layers):
        return ["model.model.layers (a ModuleList of decoder layers) not found"]
    problems = [] if isinstance(getattr(base, "norm", None), nn.Module) else ["model.model.norm not found"]
    if not isinstance(getattr(model, "lm_head", None), nn.Module):
        problems.append("model.lm_head not found")
    for i, layer in enumerate(layers):
        where = f"model.layers.{i}"
        found = _children(layer, where, _LAYER)
        for part, allowed in (("self_attn", _ATTENTION), ("mlp", _MLP)):
            module = getattr(layer, part, None)
            if isinstance(module, nn.Module):
                found += _children(module, f"{where}.{part}", allowed)
        problems += [p for p in found if p not in problems]
        if found:
            break  # layers repeat: the first one that differs says enough
    return problems


def generic_adapter(config, supported: list[str]) -> Adapter:  # noqa: ANN001
    """The layout-checked Llama adapter for an unregistered `config`, or an error saying what to do."""
    model_type = getattr(config, "model_type", None)
    missing = [f for f in _CONFIG_FIELDS if getattr(config, f, None) is None]
    if missing:
        raise UnsupportedArchitecture(
            f"no neuron-site adapter for model_type {model_type!r} and its config lacks Llama's "
            f"{', '.join(missing)}, so it is not laid out as Llama. Supported: {', '.join(supported)}.\n{HOW_TO_ADD}")
    return GenericGatedAdapter(str(model_type))
