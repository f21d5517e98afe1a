"""Mixture-of-experts FFNs (Mixtral, Qwen2-MoE): expert neurons, and switching them off where routed.

An ``ffn`` neuron of a sparse-MoE layer is intermediate coordinate j of expert e, numbered
n = e * I + j (I = one expert's width), so a layer has E * I ffn neurons - plus, for Qwen2-MoE,
the always-on shared expert's, numbered E * I + j - and every NeuronSet, mask and report works
on them unchanged; :func:`expert_of` turns n back into (expert, index), expert E meaning shared. transformers 5 keeps each layer's experts as 3-D
parameters (``gate_up_proj`` [E, 2I, H] in [gate | up] halves, ``down_proj`` [E, H, I]) that
its experts module multiplies internally, so no module input holds these neurons: the
statistics and hooks work from what the experts module is called with - hidden states
[N, H], the router's choices [N, k] and its weights [N, k].

Supported for expert neurons: PLND importance, ``deactivate`` (hooks), ``zeroed`` /
``zero_weights`` / export (a routed neuron's gate and up rows are zeroed, which silences it:
act(0)·0 = 0; a shared one's rows and down-projection column, as in a dense MLP), and the
activation statistics of LAPE, LinguaFranca and Sharing (methods/activations_moe.py: 0 where
the expert was not routed) and Integrated Gradients (methods/attribution_moe.py), and
neuron-restricted fine-tuning (enhance/expert_tap.py trains a routed neuron's gate and up rows
and down-projection column, :meth:`MixtralAdapter.trained_slices`). Attention sites are Llama's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .sites import QKV_SITES, Dims, GatedAdapter, IndexFn, SiteShapeError, WeightSlice, register_adapter, site_width


@dataclass(frozen=True)
class ExpertLayout:
    """How a MoE layer's flat ffn numbering splits into experts: ``num_experts`` routed experts of
    ``width`` neurons, then the shared expert's ``shared`` neurons (0: none). Plain numbers, so
    reports read it from a run's record without the model."""

    num_experts: int
    width: int
    shared: int = 0

    def locate(self, n: int) -> tuple[int, int]:
        """(expert, index inside it) of ffn neuron n; expert ``num_experts`` is the shared one."""
        if not 0 <= n < self.num_experts * self.width + self.shared:
            raise ValueError(f"ffn neuron {n} out of range for {self}")
        return (n // self.width, n % self.width) if n < self.num_experts * self.width else (
            self.num_experts, n - self.num_experts * self.width)

    def label(self, n: int) -> str:
        """'expert 3 #7' or 'shared #7' for ffn neuron n."""
        e, j = self.locate(n)
        return f"shared #{j}" if e == self.num_experts else f"expert {e} #{j}"


def expert_of(n: Tensor, expert_width: int) -> tuple[Tensor, Tensor]:
    """(expert, index inside the expert) of ffn neurons n of a MoE layer."""
    return n // expert_width, n % expert_width


def expert_activations(experts: nn.Module, x: Tensor, e: int, cols: Tensor | None = None) -> Tensor:
    """act(x W_gate[e]ᵀ) · (x W_up[e]ᵀ) [n, I] (or only the columns `cols`) for token states x [n, H],
    as the experts module computes them for the tokens routed to expert e."""
    width = experts.gate_up_proj.shape[1] // 2
    gate_w, up_w = experts.gate_up_proj[e, :width], experts.gate_up_proj[e, width:]
    if cols is not None:
        gate_w, up_w = gate_w[cols], up_w[cols]
    return experts.act_fn(x @ gate_w.T) * (x @ up_w.T)


def routed(top_k_index: Tensor, e: int) -> tuple[Tensor, Tensor]:
    """(token rows, top-k slots) where the router sent tokens to expert e."""
    return torch.where(top_k_index == e)


class MixtralAdapter(GatedAdapter):
    """Mixtral: Llama's attention; ``mlp`` is a sparse MoE block (``mlp.gate`` router, ``mlp.experts``)."""

    model_types = ("mixtral",)
    routed_ffn = True

    def dims(self, config) -> Dims:  # noqa: ANN001
        d = super().dims(config)
        width = self.num_experts(config) * self.expert_width(config) + self.shared_width(config)
        return Dims(d.num_layers, d.hidden, width, d.heads, d.kv_heads, d.head_dim)

    def num_experts(self, config) -> int:  # noqa: ANN001
        return int(config.num_local_experts)

    def expert_width(self, config) -> int:  # noqa: ANN001
        return int(config.intermediate_size)

    def shared_width(self, config) -> int:  # noqa: ANN001
        """Neurons of the shared expert (0: none)."""
        return 0

    def expert_layout(self, config) -> ExpertLayout:  # noqa: ANN001
        return ExpertLayout(self.num_experts(config), self.expert_width(config), self.shared_width(config))

    def shared_expert(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module] | None:
        """(shared expert MLP, its sigmoid gate) of layer `i`, or None."""
        return None

    def experts(self, model: nn.Module, i: int) -> nn.Module:
        """The module computing layer `i`'s routed experts: called with (hidden [N, H], top-k index, top-k weights)."""
        return self.layers(model)[i].mlp.experts

    def ffn_output(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp

    def _no_module(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{what}: expert neurons live inside 3-D expert weights, not in a module's input; for them "
            "neuronspec reads them from the experts module's call (models/moe.py)")

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        raise self._no_module("ffn_down")

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        raise self._no_module("ffn_in")

    def ffn_act(self, model: nn.Module, i: int) -> nn.Module:
        raise self._no_module("ffn_act")

    def hook_point(self, model: nn.Module, i: int, site: str):  # noqa: ANN201
        if site == "ffn":
            raise self._no_module("hook_point('ffn')")
        return super().hook_point(model, i, site)

    def down_weight(self, model: nn.Module, i: int) -> Tensor:
        """[hidden, ffn width]: expert e's down projection in columns e*I .. (e+1)*I - 1, then the shared one's."""
        down = self.experts(model, i).down_proj  # [E, H, I]
        parts = [down.permute(1, 0, 2).reshape(down.shape[1], -1)]
        shared = self.shared_expert(model, i)
        return torch.cat(parts + [shared[0].down_proj.weight] if shared else parts, dim=1)

    def weight_slices(self, model: nn.Module, i: int, site: str) -> list[WeightSlice]:
        """Each slice's index_fn keeps only the neurons it owns (routed or shared), so one set may mix them."""
        if site != "ffn":
            return super().weight_slices(model, i, site)
        names = {id(p): n for n, p in model.named_parameters()}
        param = self.experts(model, i).gate_up_proj  # [E, 2I, H]: rows of expert e at e*2I + [gate j | up I + j]
        width, routed_n = self.expert_width(model.config), self.num_experts(model.config) * self.expert_width(model.config)
        rows = param.view(-1, param.shape[-1])  # a view: zeroing it zeroes the parameter

        def rows_of(half: int) -> IndexFn:
            def index_fn(idx: Tensor) -> Tensor:
                idx = idx[idx < routed_n]
                return (idx // width) * (2 * width) + half * width + idx % width
            return index_fn

        def shared_of(idx: Tensor) -> Tensor:
            return idx[idx >= routed_n] - routed_n

        # a routed neuron's down_proj column is not one slice of a single dim; its zeroed gate and up rows silence it
        slices = [WeightSlice(names[id(param)], rows, 0, rows_of(1)), WeightSlice(names[id(param)], rows, 0, rows_of(0))]
        shared = self.shared_expert(model, i)
        if shared:
            mlp = shared[0]
            slices += [WeightSlice(names[id(m.weight)], m.weight, dim, shared_of)
                       for m, dim in ((mlp.up_proj, 0), (mlp.gate_proj, 0), (mlp.down_proj, 1))]
        return slices

    def trained_slices(self, model: nn.Module, i: int, idx: Tensor) -> list[tuple[str, int | tuple[int, int], Tensor]]:
        """(parameter name, dim(s), coordinates) that neuron fine-tuning trains for ffn neurons `idx` of
        layer `i`. A routed neuron (e, j): rows (e, j) and (e, I + j) of ``gate_up_proj`` [E, 2I, H] along
        dims (0, 1) and column j of ``down_proj[e]`` ([E, H, I], dims (0, 2)), as [k, 2] (expert,
        coordinate) pairs; a shared-expert neuron: its dense MLP's rows and column (:meth:`weight_slices`)."""
        width, routed_n = self.expert_width(model.config), self.num_experts(model.config) * self.expert_width(model.config)
        experts = self.experts(model, i)
        names = {id(p): n for n, p in model.named_parameters()}
        out: list[tuple[str, int | tuple[int, int], Tensor]] = []
        e, j = expert_of(idx[idx < routed_n], width)
        if len(e):
            rows = torch.cat([torch.stack([e, j], 1), torch.stack([e, width + j], 1)])
            out += [(names[id(experts.gate_up_proj)], (0, 1), rows),
                    (names[id(experts.down_proj)], (0, 2), torch.stack([e, j], 1))]
        if bool((idx >= routed_n).any()):
            flat = names[id(experts.gate_up_proj)]  # weight_slices' flattened rows of the routed experts
            out += [(sl.name, sl.dim, sl.index_fn(idx)) for sl in self.weight_slices(model, i, "ffn") if sl.name != flat]
        return out

    def check(self, model: nn.Module) -> Dims:
        dims, layers = self.dims(model.config), self.layers(model)
        shape = (self.num_experts(model.config), 2 * self.expert_width(model.config))
        problems = [] if len(layers) == dims.num_layers else [f"config says {dims.num_layers} layers, model has {len(layers)}"]
        for i, layer in enumerate(layers):
            experts = getattr(layer.mlp, "experts", None)
            if experts is None:  # one ffn width per model: dense layers between sparse ones are refused (dims)
                problems.append(f"layer {i}: {type(layer.mlp).__name__} is not a sparse MoE block")
            elif tuple(experts.gate_up_proj.shape[:2]) != shape:
                problems.append(f"layer {i}: experts.gate_up_proj is {tuple(experts.gate_up_proj.shape)}, expected {shape} first")
            for site in (*QKV_SITES, "attn.o"):
                width = site_width(dims, site)
                problems += [f"layer {i} {site}: {sl.name} has size {sl.param.shape[sl.dim]} along dim {sl.dim}"
                             for sl in super().weight_slices(model, i, site) if sl.param.shape[sl.dim] != width]
        if problems:
            raise SiteShapeError(f"{type(self).__name__} does not match this model:\n  " + "\n  ".join(problems[:10]))
        return dims

    def switch_off(self, model: nn.Module, i: int, neurons: Tensor) -> list[RemovableHandle]:
        """Hooks that switch `neurons` (ffn of layer `i`) off: routed ones where the router sent them
        (:func:`switch_off_hook`, prepended so every other hook sees the changed output), shared ones
        at the shared expert's down-projection input, as in a dense MLP."""
        routed_n = self.num_experts(model.config) * self.expert_width(model.config)
        handles = []
        if bool((neurons < routed_n).any()):
            hook = switch_off_hook(self, model, neurons[neurons < routed_n])
            handles.append(self.experts(model, i).register_forward_hook(hook, prepend=True))
        shared = neurons[neurons >= routed_n] - routed_n
        if len(shared):
            def zero(module: nn.Module, args: tuple) -> tuple:
                return (args[0].index_fill(-1, shared.to(args[0].device), 0.0), *args[1:])
            handles.append(self.shared_expert(model, i)[0].down_proj.register_forward_pre_hook(zero))  # type: ignore[index]
        return handles


class Qwen2MoeAdapter(MixtralAdapter):
    """Qwen2-MoE / Qwen1.5-MoE: routed experts (``mlp.experts``, ``moe_intermediate_size`` each) plus a
    shared expert (``mlp.shared_expert``, scaled by sigmoid(``mlp.shared_expert_gate``)) in every layer."""

    model_types = ("qwen2_moe",)

    def dims(self, config) -> Dims:  # noqa: ANN001
        """Refused, from the config alone (so at plan time), for dense MLP layers between sparse ones."""
        step, dense = int(getattr(config, "decoder_sparse_step", 1)), list(getattr(config, "mlp_only_layers", []) or [])
        layers = [i for i in range(int(config.num_hidden_layers)) if i in dense or (i + 1) % step]
        if layers or not config.num_experts:
            raise SiteShapeError(
                f"Qwen2-MoE with dense MLP layers {layers or 'everywhere'} (mlp_only_layers={dense}, "
                f"decoder_sparse_step={step}, num_experts={config.num_experts}) is not supported: neuronspec gives "
                "every layer's ffn site one width, and a dense layer's differs from a sparse one's")
        return super().dims(config)

    def num_experts(self, config) -> int:  # noqa: ANN001
        return int(config.num_experts)

    def expert_width(self, config) -> int:  # noqa: ANN001
        return int(config.moe_intermediate_size)

    def shared_width(self, config) -> int:  # noqa: ANN001
        return int(config.shared_expert_intermediate_size)

    def shared_expert(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module]:
        mlp = self.layers(model)[i].mlp
        return mlp.shared_expert, mlp.shared_expert_gate


def switch_off_hook(adapter: MixtralAdapter, model: nn.Module, neurons: Tensor) -> Callable[..., Tensor]:
    """Forward hook on a layer's experts module that removes the contribution of the routed expert
    neurons `neurons` where they were routed: w · a_j · W_down[e][:, j] for each of their tokens - exactly
    what zeroing them inside the expert computation leaves out (up to float rounding)."""
    width = adapter.expert_width(model.config)
    experts_of, cols = expert_of(neurons, width)
    by_expert = {int(e): cols[experts_of == e] for e in torch.unique(experts_of)}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x, top_k_index, top_k_weights = args[:3]
        out = output.clone()
        for e, j in by_expert.items():
            rows, slots = routed(top_k_index, e)
            if not len(rows):
                continue
            j = j.to(x.device)
            a = expert_activations(module, x[rows], e, j)  # [n, |j|]
            removed = (a * top_k_weights[rows, slots, None].to(a.dtype)) @ module.down_proj[e][:, j].T
            out.index_add_(0, rows, -removed.to(out.dtype))
        return out
    return hook


register_adapter(MixtralAdapter)
register_adapter(Qwen2MoeAdapter)
