"""Attribution of the model's output to ffn neurons: Integrated Gradients and a cheap score.

**Integrated Gradients** (Sundararajan et al. 2017), as Sharing Matters names it. For one
layer i, let a ∈ R^{T×I} be the ffn neurons of every token (the input of the down
projection) and f(a) the log-probability the model assigns to its targets when layer i's
neurons are replaced by a (everything upstream is unchanged). With baseline a' = 0 (the
layer switched off),

    IG_k = Σ_t a_{t,k} · ∫₀¹ ∂f/∂a_{t,k}(α·a) dα

and completeness holds: Σ_k IG_k = f(a) − f(0). The integral is a quadrature over
``steps`` values of α, and where those go matters. Gemma normalises the ffn output
(post-feedforward RMSNorm), so f(α·a) is flat for α ≫ √eps / rms and all of f(a) − f(0)
happens within a few decades above α ≈ √eps / rms, in peaks an even grid never samples.
The default "adaptive" rule therefore probes f (forward only) on a log-spaced α grid and
puts the gradient nodes where f moves; static rules are available (:func:`quadrature`).
The completeness gap is returned per sample and layer, with a warning above a tolerance.
The α values are *batched*: the batch is repeated for a chunk of α values and a pre-hook on
the down projection scales each copy's activation by its α, so one forward/backward
covers ``step_batch`` steps. Only the gradient with respect to the scaled activation is
taken (``torch.autograd.grad``), so no parameter ``.grad`` is touched.

f is either the teacher-forced log-probability of each sample's own tokens (the sum over
its predicted positions, the quantity perplexity is built from) or, with ``targets``, the
log-probability of one given next token after the sample's last real token.

Expert neurons (Mixtral, Qwen2-MoE) are scaled as one tensor rebuilt from the MoE block's input
(:mod:`~neuronspec.methods.attribution_moe`). Completeness then holds for the last layer only: the
routers of later layers pick their top-k experts from inputs that move with α, so f jumps where
one switches, and the integral of the gradient does not see the jump (the warning says so).

**Cheap score** (the Sharing Matters notebooks): |a_k|·‖W_down[:,k]‖ — the size of
neuron k's write into the residual stream; pass any activation matrix (e.g. the
``"mean_abs"`` or ``"last"`` pooling of the statistics pass).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from neuronspec.evaluate.logprobs import target_logprobs
from neuronspec.methods.attribution_moe import ExpertScale
from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.sites import adapter_for

Rule = Literal["adaptive", "geometric", "gausslegendre", "riemann_middle"]
RULES: tuple[str, ...] = ("adaptive", "geometric", "gausslegendre", "riemann_middle")
#: log-α rules integrate [GEOMETRIC_FLOOR, 1] in log α and [0, GEOMETRIC_FLOOR] linearly
GEOMETRIC_FLOOR = 1e-8
#: fraction of the adaptive rule's spare nodes spread by panel width (as an even grid would), the
#: rest going where f moves; the width part covers panels where f rises and falls back
WIDTH_SHARE = 0.5


class CompletenessWarning(UserWarning):
    """Integrated Gradients whose sum misses f(a) − f(0) by more than the tolerance."""


def _gauss(n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return lo + (x + 1) / 2 * (hi - lo), w / 2 * (hi - lo)


def quadrature(steps: int, rule: Rule = "geometric") -> tuple[Tensor, Tensor]:
    """(α nodes, weights) on [0, 1]. The weights sum to 1 (the geometric rule: up to its own
    quadrature error, below 1e-12 from 16 steps).

    ``gausslegendre``: `steps` Gauss–Legendre nodes on [0, 1] — best when f(α·a) is smooth
    (Llama, Qwen2, Mistral, GPT-2, BLOOM: 16–32 steps usually give < 1% completeness gap).
    ``geometric``: Gauss–Legendre in log α on [1e-8, 1] (steps − 1 nodes) plus one node on
    [0, 1e-8], where f is linear in α. It is needed for models that normalise the ffn
    output (Gemma's post-feedforward RMSNorm): there f(α·a) is flat for α ≫ √eps / rms and
    all of f(a) − f(0) happens within a few decades above α ≈ √eps / rms, a sliver an even
    grid never samples. 64 steps keep the gap below ~0.2% on every tiny architecture.
    ``riemann_middle``: the midpoint rule (for comparison with other IG implementations).
    The default of :func:`integrated_gradients`, ``adaptive``, is built per batch by
    :func:`probe_edges` and :func:`adaptive_quadrature`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "gausslegendre":
        x, w = _gauss(steps, 0.0, 1.0)
    elif rule == "riemann_middle":
        x, w = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    elif rule == "geometric":
        if steps < 2:
            raise ValueError("the geometric rule needs at least 2 steps")
        x0, w0 = _gauss(1, 0.0, GEOMETRIC_FLOOR)
        s, ws = _gauss(steps - 1, np.log(GEOMETRIC_FLOOR), 0.0)
        x, w = np.concatenate([x0, np.exp(s)]), np.concatenate([w0, ws * np.exp(s)])  # dα = α d(log α)
    else:
        raise ValueError(f"unknown static quadrature rule {rule!r}; use one of {', '.join(RULES[1:])}")
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)


def probe_edges(probes: int) -> Tensor:
    """Panel edges of the adaptive rule: 0, then `probes` log-spaced α from 1e-8 to 1."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2, got {probes}")
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.logspace(np.log10(GEOMETRIC_FLOOR), 0.0, probes, dtype=torch.float64)])


def initial_counts(edges: Tensor, f_at_edges: Tensor, nodes: int) -> Tensor:
    """How many Gauss–Legendre nodes each adaptive panel [edges[i], edges[i+1]] starts with, [panels].

    `f_at_edges` is [len(edges)] or [len(edges), B]. Every panel gets one node; of the rest, a
    WIDTH_SHARE part is spread by panel width (as an even grid would: this covers f rising and
    falling back inside a panel) and the remainder by how much f changes across the panel
    (|Δf| normalised per sample, averaged over the batch). Largest remainders break ties.
    """
    panels = edges.numel() - 1
    if nodes < panels:
        raise ValueError(f"the adaptive rule needs at least one node per panel ({panels}), got {nodes}")
    # node counts are host bookkeeping: f arrives from the model's device, edges live on the host
    f, edges = f_at_edges.detach().double().cpu().reshape(edges.numel(), -1), edges.detach().double().cpu()
    change = (f[1:] - f[:-1]).abs()  # [panels, B]
    total = change.sum(0, keepdim=True)
    moved = torch.where(total > 0, change / total.clamp_min(1e-300), torch.full_like(change, 1.0 / panels)).mean(1)
    width = (edges[1:] - edges[:-1]) / (edges[-1] - edges[0])
    extra = ((1 - WIDTH_SHARE) * moved + WIDTH_SHARE * width) * (nodes - panels)
    counts = extra.floor().long()
    left = nodes - panels - int(counts.sum())
    if left > 0:
        counts[torch.sort(extra - counts, descending=True, stable=True).indices[:left]] += 1
    return 1 + counts


def adaptive_quadrature(edges: Tensor, f_at_edges: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """(α nodes, weights) of :func:`initial_counts` Gauss–Legendre nodes per panel (weights sum to 1).

    The panels are narrow (edges a factor 10^(8/(probes−1)) apart), so plain Gauss–Legendre in
    α within each is accurate. :func:`integrated_gradients` starts from half its budget placed
    this way and spends the rest refining the panels whose quadrature misses that panel's exact
    f(edges[i+1]) − f(edges[i]), known from the probes.
    """
    counts = initial_counts(edges, f_at_edges, steps)
    parts = [_gauss(int(n), float(edges[i]), float(edges[i + 1])) for i, n in enumerate(counts)]
    return (torch.tensor(np.concatenate([x for x, _ in parts]), dtype=torch.float64),
            torch.tensor(np.concatenate([w for _, w in parts]), dtype=torch.float64))


def objective(model: nn.Module, hidden: Tensor, input_ids: Tensor, attention_mask: Tensor,
              targets: Tensor | None = None) -> Tensor:
    """f per row, [B]: Σ log p(own tokens) over predicted positions, or log p(targets) after the last token.

    `hidden` is the decoder output after the final norm, [B, T, hidden].
    """
    b = hidden.shape[0]
    if targets is None:
        predicts = attention_mask[:, 1:].bool()
        values = target_logprobs(model, hidden[:, :-1][predicts], input_ids[:, 1:][predicts])
        rows = torch.arange(b, device=hidden.device)[:, None].expand_as(predicts)[predicts]
        return torch.zeros(b, dtype=values.dtype, device=hidden.device).index_add(0, rows, values)
    last = attention_mask.sum(1) - 1
    return target_logprobs(model, hidden[torch.arange(b, device=hidden.device), last], targets)


@dataclass
class IGResult:
    layers: list[int]
    attributions: Tensor  # [n, len(layers), I] float32, summed over tokens
    f_input: Tensor  # [n] f with nothing changed
    f_baseline: Tensor  # [n, len(layers)] f with that layer's ffn neurons zeroed
    steps: int
    rule: str

    @property
    def completeness_gap(self) -> Tensor:
        """Σ_k IG_k − (f(a) − f(0)) per sample and layer, [n, len(layers)] (quadrature error)."""
        return self.attributions.double().sum(-1) - (self.f_input[:, None].double() - self.f_baseline.double())

    def to_tensors(self) -> dict[str, Tensor]:
        return {"attributions": self.attributions.contiguous(), "f_input": self.f_input.contiguous(),
                "f_baseline": self.f_baseline.contiguous(), "layers": torch.tensor(self.layers, dtype=torch.int64)}

    def to_json(self) -> dict[str, Any]:
        gap = self.completeness_gap.abs()
        return {"layers": self.layers, "steps": self.steps, "rule": self.rule, "samples": int(self.f_input.shape[0]),
                "max_abs_completeness_gap": float(gap.max()) if gap.numel() else 0.0}


class _Scale:
    """Pre-hook on the down projection: replace its input x by α·x (α per row), optionally
    as a leaf that requires grad; record the unscaled input."""

    def __init__(self) -> None:
        self.alpha: Tensor | None = None
        self.grad_leaf = False
        self.leaf: Tensor | None = None
        self.clean: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        self.clean = x.detach()
        scaled = x.detach() * self.alpha.to(x.dtype)[:, None, None]
        if self.grad_leaf:
            scaled.requires_grad_(True)
            self.leaf = scaled
        return (scaled, *args[1:])


#: the adaptive rule stops refining once Σ over panels of |quadrature − exact Δf| is below
#: this fraction of max(|f(a) − f(0)|, 0.1), for every sample of the batch
REFINE_TOLERANCE = 1e-3


def adaptive_integral(edges: Tensor, f_edges: Tensor, steps: int,
                      integrate: Callable[[list[tuple[float, float, int]]], Tensor],
                      tolerance: float = REFINE_TOLERANCE) -> Tensor:
    """The adaptive rule: Σ over panels of `integrate`'s per-panel quadratures, refined where they
    disagree with the panel's exact Δf.

    `integrate([(lo, hi, n), ...])` returns, per panel, the n-node Gauss–Legendre quadrature of
    the attribution integrand, [panels, B, I] (summing over I approximates f(hi) − f(lo)).
    Half of `steps` nodes are placed by :func:`initial_counts`; then, while budget remains and
    Σ_panels |Σ_I quadrature − Δf| > tolerance · max(|f(1) − f(0)|, 0.1) for some sample, the
    worst panel is recomputed with twice its nodes. Returns [B, I].
    """
    f_edges = f_edges.double().reshape(edges.numel(), -1)
    counts = initial_counts(edges, f_edges, max(edges.numel() - 1, steps // 2)).tolist()
    spans = [(float(edges[i]), float(edges[i + 1])) for i in range(len(counts))]
    per_panel = integrate([(lo, hi, n) for (lo, hi), n in zip(spans, counts)])  # [P, B, I]
    exact = (f_edges[1:] - f_edges[:-1]).to(per_panel.device)  # [P, B]
    scale = (f_edges[-1] - f_edges[0]).abs().clamp_min(0.1).to(per_panel.device)  # [B]
    used = sum(counts)
    while used < steps:
        error = ((per_panel.sum(-1) - exact).abs() / scale).amax(1)  # [P], worst sample
        if float(error.sum()) <= tolerance:
            break
        worst = int(error.argmax())
        n = min(2 * counts[worst], counts[worst] + steps - used)
        per_panel[worst] = integrate([(*spans[worst], n)])[0]
        used, counts[worst] = used + n, n
    return per_panel.sum(0)


def _ig_batch(model: nn.Module, batch: Batch, layer: int, rule: Rule, steps: int, probes: int, step_batch: int,
              targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(attributions [B, I], f(a) [B], f(0) [B]) of one batch and layer."""
    adapter = adapter_for(model.config)  # checked once by integrated_gradients
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    tg = None if targets is None else targets.to(device)
    b = ids.shape[0]
    scale = ExpertScale(adapter) if adapter.routed_ffn else _Scale()  # type: ignore[arg-type]

    def run(alphas: Tensor, grad: bool) -> Tensor:
        """f for every (α, sample) of a chunk, [k*B]; with `grad`, the scaled input is a grad leaf."""
        k = alphas.numel()
        scale.alpha, scale.grad_leaf = alphas.to(device, torch.float32).repeat_interleave(b), grad
        rep_ids, rep_mask = ids.repeat(k, 1), mask.repeat(k, 1)
        return objective(model, hidden_forward(model, rep_ids, rep_mask), rep_ids, rep_mask,
                         None if tg is None else tg.repeat(k))

    def integrate(panels: list[tuple[float, float, int]], clean: Tensor) -> Tensor:
        """Σ_nodes w · a ⊙ ∇f(α·a), summed over tokens, for each (lo, hi, n) panel: [len(panels), B, I]."""
        parts = [_gauss(n, lo, hi) for lo, hi, n in panels]
        alphas = torch.tensor(np.concatenate([x for x, _ in parts]))
        weights = torch.tensor(np.concatenate([w for _, w in parts]), device=device)
        group = torch.cat([torch.full((n,), g, dtype=torch.int64) for g, (_, _, n) in enumerate(panels)]).to(device)
        out = torch.zeros(len(panels), b, clean.shape[-1], dtype=torch.float64, device=device)
        for s in range(0, alphas.numel(), step_batch):
            k = alphas[s:s + step_batch].numel()
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(run(alphas[s:s + step_batch], True).sum(), scale.leaf)
            scale.leaf = None
            contrib = (grad.double().view(k, b, *grad.shape[1:]) * clean).sum(2)  # [k, B, I]
            out.index_add_(0, group[s:s + step_batch], contrib * weights[s:s + step_batch, None, None])
        return out

    handles = scale.attach(model, layer) if isinstance(scale, ExpertScale) else [
        adapter.ffn_down(model, layer).register_forward_pre_hook(scale)]
    try:
        # f at the probe α (always including 0 = baseline and 1 = clean), without gradients
        edges = probe_edges(probes) if rule == "adaptive" else torch.tensor([0.0, 1.0], dtype=torch.float64)
        with torch.no_grad():
            f_edges = torch.cat([run(edges[s:s + step_batch], False).view(-1, b).double()
                                 for s in range(0, edges.numel(), step_batch)])  # [P + 1, B]
            # the unscaled input is the same in every copy; padding never counts
            clean = scale.clean[:b].double() * mask[:, :, None]  # [B, T, I]
        if rule != "adaptive":
            alphas, weights = quadrature(steps, rule)
            total = torch.zeros(b, clean.shape[-1], dtype=torch.float64, device=device)
            for s in range(0, alphas.numel(), step_batch):
                k = alphas[s:s + step_batch].numel()
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(run(alphas[s:s + step_batch], True).sum(), scale.leaf)
                scale.leaf = None
                w = weights[s:s + step_batch].to(device).view(k, 1, 1)
                total += ((grad.double().view(k, b, *grad.shape[1:]) * clean).sum(2) * w).sum(0)
        else:
            total = adaptive_integral(edges, f_edges, steps, lambda panels: integrate(panels, clean))
    finally:
        for handle in handles:
            handle.remove()
    return total.float().cpu(), f_edges[-1].float().cpu(), f_edges[0].float().cpu()


def integrated_gradients(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    layers: Sequence[int] | None = None,
    steps: int = 128,
    step_batch: int = 16,
    rule: Rule = "adaptive",
    probes: int = 33,
    targets: Sequence[int] | Tensor | None = None,
    n_samples: int | None = None,
    tolerance: float | None = 0.05,
) -> IGResult:
    """IG of f with respect to each requested layer's ffn neurons (baseline: that layer zeroed).

    `targets[i]`, when given, is the next token whose log-probability f measures for sample i
    (indexed like ``Batch.index``); otherwise f is the teacher-forced log-probability of the
    sample's own tokens. Returns attributions summed over tokens, per sample and layer.
    Quadrature (`rule`): "adaptive" (default) probes f at `probes` + 1 values of α without
    gradients, places half of the `steps` gradient nodes by :func:`initial_counts`, then spends
    the rest refining (doubling the nodes of) the panel whose quadrature misses its exact Δf
    the most, until every panel agrees within REFINE_TOLERANCE or the budget is used; the
    static rules are described at :func:`quadrature`. Cost per batch and layer: probes + 1
    (static rules: 2) forward rows of B + at most `steps` forward/backward rows of B, in
    chunks of `step_batch` α values. With `tolerance`, warns (:class:`CompletenessWarning`)
    when |Σ IG − (f(a) − f(0))| > tolerance · max(|f(a) − f(0)|, 0.1) for some sample and
    layer (f is a sum of log-probabilities: at the default, gaps under 0.005 nats never warn).
    """
    dims = adapter_for(model).dims(model.config)
    layers = list(range(dims.num_layers)) if layers is None else [int(l) for l in layers]
    for l in layers:
        if not 0 <= l < dims.num_layers:
            raise ValueError(f"layer {l} out of range [0, {dims.num_layers})")
    if step_batch < 1:
        raise ValueError(f"step_batch must be >= 1, got {step_batch}")
    if rule not in RULES:
        raise ValueError(f"unknown quadrature rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "adaptive":
        probe_edges(probes)  # validates
        if steps < probes:
            raise ValueError(f"the adaptive rule needs steps >= probes ({probes}), got {steps}")
    else:
        quadrature(steps, rule)  # validates
    tgt = None if targets is None else torch.as_tensor(targets, dtype=torch.int64)
    parts: list[tuple[list[int], Tensor, Tensor, Tensor]] = []
    for batch in batches:
        bt = None if tgt is None else tgt[torch.as_tensor(batch.index)]
        per_layer = [_ig_batch(model, batch, l, rule, steps, probes, step_batch, bt) for l in layers]
        parts.append((list(batch.index), torch.stack([p[0] for p in per_layer], 1), per_layer[0][1],
                      torch.stack([p[2] for p in per_layer], 1)))
    index = [i for idx, *_ in parts for i in idx]
    n = n_samples if n_samples is not None else (max(index) + 1 if index else 0)
    if sorted(index) != list(range(n)):
        raise ValueError(f"batches must cover sample indices 0..{n - 1} exactly once")
    attributions = torch.zeros(n, len(layers), dims.intermediate)
    f_input, f_baseline = torch.zeros(n), torch.zeros(n, len(layers))
    for idx, attr, fi, fb in parts:
        where = torch.as_tensor(idx)
        attributions[where], f_input[where], f_baseline[where] = attr, fi, fb
    result = IGResult(layers, attributions, f_input, f_baseline, steps, rule)
    if tolerance is not None and n:
        delta = (f_input[:, None] - f_baseline).double().abs().clamp_min(0.1)
        worst = float((result.completeness_gap.abs() / delta).max())
        if worst > tolerance:
            routers = ("; on a mixture-of-experts model a later layer's router switching experts along the path is a "
                       "jump in f that no gradient sees, so layers below the last miss it whatever the steps"
                       if adapter_for(model).routed_ffn else "")
            warnings.warn(f"Integrated Gradients miss f(a) - f(0) by up to {worst:.1%} with {steps} {rule} steps; "
                          f"use more steps (and, for the adaptive rule, more probes){routers}",
                          CompletenessWarning, stacklevel=2)
    return result


# ---- the cheap score ----------------------------------------------------------------


def down_norms(model: nn.Module) -> Tensor:
    """‖W_down[:, k]‖ for every layer, [L, I] float32."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    return torch.stack([adapter.down_weight(model, i).detach().float().norm(dim=0).cpu() for i in range(dims.num_layers)])


def activation_norm_scores(model: nn.Module, activations: Tensor) -> Tensor:
    """|a_k|·‖W_down[:,k]‖ for activations [n, L*I] or [n, L, I]; returns [n, L, I] float32."""
    norms = down_norms(model)
    L, width = norms.shape
    a = activations.float().reshape(activations.shape[0], L, width)
    return a.abs() * norms
