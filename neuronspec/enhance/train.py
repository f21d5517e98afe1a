"""Fine-tune only the selected neurons (MWork "enhancement"), with compact optimiser state.

How: every model parameter is frozen (``requires_grad=False``). Each (parameter, dim)
that the neuron set touches gets one float32 ``nn.Parameter`` holding just the selected
rows/columns (the "compact" tensor, also the master copy). The frozen weight always
holds the current values of those rows (written back after each optimiser step), so the
forward pass is the model's own, bit for bit. A forward hook on the owning module routes
the gradient to the compact tensor through a pass-through autograd function whose
backward computes only the selected slice of the weight gradient (e.g. ``G[:, rows]^T X``
for output rows), never the full weight gradient. Hence:

- AdamW state = 2 x (selected values) float32, not 2 x (all parameters);
- gradient clipping acts on the masked gradient (the compact gradients are exactly the
  selected slices of the full gradient; tests check that against plain autograd);
- parameters outside the set are never written.

Routed expert neurons of a mixture-of-experts layer own slices of 3-D expert weights; their
tap is on the experts module (expert_tap.py), the rest is the same.

The loss is the mean next-token NLL over the real tokens of an effective batch; the
unembedding runs a chunk of tokens at a time and each chunk's gradient w.r.t. the hidden
states is taken at once, so the full [tokens, vocab] logits never exist (Gemma 3's
vocabulary is 262k) and nothing is recomputed.

The model stays in eval mode throughout (dropout off), which with a seeded document
order makes a run deterministic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..evaluate.logprobs import (
    _CHUNK_ELEMENTS,
    decoder_of,
    model_device,
    pad_token_id,
    target_logprobs,
)
from ..models.forward import encode, iter_batches
from ..models.masks import NeuronSet, check_fits
from ..models.sites import adapter_for
from .delta import Delta, DeltaEntry, Dims, read_slices, write_slices
from .expert_tap import expert_hook, gate_up_order
from .settings import EnhanceSettings, lr_at


@dataclass(frozen=True)
class StepInfo:
    """Reported to ``on_step`` after every optimiser step."""

    step: int  # 1-based
    total_steps: int
    loss: float  # mean NLL of the step's tokens, before the update
    lr: float
    grad_norm: float  # of the (masked) gradient, before clipping
    tokens: int
    seconds: float


@dataclass
class EnhanceResult:
    delta: Delta
    losses: list[float]
    steps: int
    tokens: int  # predicted tokens trained on (all epochs)
    optimizer_state_bytes: int
    trainable_params: int
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0
    full_adam_state_bytes: int = 0  # what AdamW over every parameter would hold

    def summary(self) -> dict[str, Any]:
        """JSON-able record of the run (everything but the delta's tensors)."""
        return {"steps": self.steps, "tokens": self.tokens, "losses": list(self.losses), "lrs": list(self.lrs),
                "grad_norms": list(self.grad_norms), "seconds": self.seconds,
                "optimizer_state_bytes": self.optimizer_state_bytes, "trainable_params": self.trainable_params,
                "full_adam_state_bytes": self.full_adam_state_bytes, "delta_bytes": self.delta.nbytes(),
                "delta_tensors": len(self.delta)}


# ---- which slices ---------------------------------------------------------------------


def selected_slices(model: nn.Module, neurons: NeuronSet) -> dict[str, tuple[Dims, Tensor]]:
    """{parameter name: (dim, sorted coordinates)} owned by the neurons, merged over sites
    and layers (e.g. q and k neurons of GPT-2 share ``c_attn``). Routed expert neurons give
    (dims, sorted [k, 2] (expert, coordinate) pairs) of the 3-D expert weights
    (``MixtralAdapter.trained_slices``)."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    check_fits(neurons, dims)
    found: dict[str, tuple[Dims, list[Tensor]]] = {}
    for site, layer, idx in neurons.items():
        if adapter.routed_ffn and site == "ffn":  # expert neurons: slices of the 3-D expert weights
            parts_of = adapter.trained_slices(model, layer, idx)  # type: ignore[attr-defined]
        else:
            parts_of = [(sl.name, sl.dim, sl.index_fn(idx)) for sl in adapter.weight_slices(model, layer, site)]
        for name, sl_dim, coords in parts_of:
            dim, parts = found.setdefault(name, (sl_dim, []))
            if dim != sl_dim:
                raise NotImplementedError(f"{name}: neurons select slices along two dims ({dim} and {sl_dim});"
                                          " not supported")
            parts.append(coords)
    return {name: (dim, torch.unique(torch.cat(parts), dim=0)) for name, (dim, parts) in found.items()}


def full_adam_state_bytes(model: nn.Module) -> int:
    """Adam(W) state over every parameter: exp_avg + exp_avg_sq in the parameter dtype, plus
    a float32 step counter per tensor (what ``torch.optim.AdamW`` allocates)."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in model.parameters())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
               if isinstance(v, Tensor))


# ---- the gradient tap -------------------------------------------------------------------


class _Tap(torch.autograd.Function):
    """Identity on the module output y; backward also returns d loss / d (selected slice).

    kind "out": rows of an [out, in] weight -> G[:, coords]^T X            ([k, in])
    kind "in":  columns of an [out, in] weight -> G^T X[:, coords]         ([out, k])
    kind "bias": G[:, coords].sum(0)                                        ([k])
    ``transpose`` for Conv1D-style [in, out] weights. Computed in float32.
    """

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, compact: Tensor, coords: Tensor, kind: str,  # noqa: ANN001
                transpose: bool) -> Tensor:
        ctx.save_for_backward(x, coords)
        ctx.kind, ctx.transpose, ctx.dtype = kind, transpose, compact.dtype
        return y.view_as(y)

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: ANN001, ANN205
        x, coords = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[2]:
            g2 = gy.reshape(-1, gy.shape[-1])
            if ctx.kind == "bias":
                g = g2.index_select(1, coords).float().sum(0)
            else:
                x2 = x.reshape(-1, x.shape[-1])
                if ctx.kind == "out":
                    g = g2.index_select(1, coords).float().t() @ x2.float()
                else:
                    g = g2.float().t() @ x2.index_select(1, coords).float()
                if ctx.transpose:
                    g = g.t()
            g = g.to(ctx.dtype)
        return gy, None, g, None, None, None


@dataclass
class _Slot:
    name: str
    param: Tensor
    dim: Dims
    coords: Tensor  # on the param's device
    kind: str  # "out", "in", "bias" (_Tap) or "expert" (expert_tap.py)
    transpose: bool
    compact: nn.Parameter  # float32 master copy of the selected slices
    original: Tensor  # the slices before training (param dtype)


def _linear_layout(module: nn.Module) -> tuple[int, int]:
    """(out dim, in dim) of the weight of a module computing x @ W^T + b or x @ W + b."""
    if isinstance(module, nn.Linear):
        return 0, 1
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D
        return 1, 0
    raise NotImplementedError(f"neuron fine-tuning supports nn.Linear and Conv1D modules, got {type(module).__name__}")


def _make_slots(model: nn.Module, neurons: NeuronSet) -> list[_Slot]:
    slots = []
    for name, (dim, coords) in selected_slices(model, neurons).items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        param = getattr(module, attr)
        if isinstance(dim, tuple):
            kind, transpose = "expert", False
        elif attr == "bias":
            kind, transpose = "bias", False
        elif attr == "weight":
            out_dim, in_dim = _linear_layout(module)
            kind = "out" if dim == out_dim else "in"
            transpose = (out_dim, in_dim) == (1, 0)
        else:
            raise NotImplementedError(f"{name}: not a weight or bias of its module")
        coords = coords.to(param.device)
        original = read_slices(param.detach(), dim, coords).clone()
        compact = nn.Parameter(original.float().clone())
        slots.append(_Slot(name, param, dim, coords, kind, transpose, compact, original))
    return slots


def _register_taps(model: nn.Module, slots: list[_Slot]) -> list[Any]:
    by_module: dict[str, list[_Slot]] = {}
    for s in slots:
        by_module.setdefault(s.name.rpartition(".")[0], []).append(s)
    handles = []
    for module_name, group in by_module.items():
        if group[0].kind == "expert":
            handles.append(_register_expert_tap(model.get_submodule(module_name), group))
            continue

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor, group: list[_Slot] = group) -> Tensor:
            x = args[0] if args else next(iter(kwargs.values()))
            for s in group:
                output = _Tap.apply(output, x, s.compact, s.coords, s.kind, s.transpose)
            return output
        handles.append(model.get_submodule(module_name).register_forward_hook(hook, with_kwargs=True))
    return handles


def _register_expert_tap(experts: nn.Module, group: list[_Slot]) -> Any:
    """One tap per experts module, for its gate_up_proj rows and down_proj columns together."""
    by_attr = {s.name.rpartition(".")[2]: s for s in group}
    if set(by_attr) != {"gate_up_proj", "down_proj"}:
        raise NotImplementedError(f"expert neurons train their gate_up_proj rows and down_proj columns together, "
                                  f"got {sorted(by_attr)}")
    gu, down = by_attr["gate_up_proj"], by_attr["down_proj"]
    order = gate_up_order(down.coords, gu.coords, experts.gate_up_proj.shape[1] // 2)
    return experts.register_forward_hook(expert_hook(gu.compact, down.compact, down.coords, order))


def _write(slots: list[_Slot], originals: bool = False) -> None:
    with torch.no_grad():
        for s in slots:
            src = s.original if originals else s.compact.detach().to(s.param.dtype)
            write_slices(s.param, s.dim, s.coords, src)


# ---- loss -----------------------------------------------------------------------------


def _chunk_nll(model: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return -target_logprobs(model, hidden, targets, chunk_tokens=max(1, hidden.shape[0])).sum()


class _ChunkedNLL(torch.autograd.Function):
    """Sum of NLLs over hidden states [N, d], with d sum / d hidden computed chunk by chunk
    *during the forward pass* (the loss is a scalar, so backward only scales it).

    Each chunk's logits live only inside its own small autograd graph, so peak memory is
    one chunk's logits and the unembedding runs once forward and once backward (no
    recomputation, unlike checkpointing). Valid only when no unembedding parameter needs
    a gradient (then :func:`nll_sum` falls back to checkpointing).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, targets: Tensor, model: nn.Module, chunk: int) -> Tensor:  # noqa: ANN001
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            with torch.enable_grad():
                hc = hidden[start:start + chunk].detach().requires_grad_(True)
                loss = _chunk_nll(model, hc, targets[start:start + chunk])
                (g,) = torch.autograd.grad(loss, hc)
            total += loss.detach()
            grads[start:start + chunk] = g
        ctx.save_for_backward(grads)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        (grads,) = ctx.saved_tensors
        return grads * grad_out.to(grads.dtype), None, None, None


def nll_sum(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, *,
            chunk_tokens: int | None = None) -> tuple[Tensor, int]:
    """(sum of next-token NLLs over real target tokens, their count), differentiable.

    The unembedding runs `chunk_tokens` positions at a time, so the [tokens, vocab]
    logits never exist. With grad enabled: if the unembedding is frozen, each chunk's
    gradient w.r.t. the hidden states is taken right away (:class:`_ChunkedNLL`);
    otherwise each chunk is checkpointed (recomputed in backward).
    """
    device = model_device(model)
    ids, att = input_ids.to(device), attention_mask.to(device)
    hidden = decoder_of(model)(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    predicts = att[:, 1:].bool()
    h, t = hidden[:, :-1][predicts], ids[:, 1:][predicts]
    n = t.numel()
    unembed = model.get_output_embeddings()
    if chunk_tokens is None:
        vocab = int(getattr(unembed, "out_features", 0) or unembed.weight.shape[0])
        chunk_tokens = max(1, _CHUNK_ELEMENTS // max(1, vocab))
    if not (torch.is_grad_enabled() and h.requires_grad):
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk_tokens):
            total = total + _chunk_nll(model, h[start:start + chunk_tokens], t[start:start + chunk_tokens])
        return total, n
    if not any(p.requires_grad for p in unembed.parameters()):
        return _ChunkedNLL.apply(h, t, model, chunk_tokens), n
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_tokens):
        total = total + checkpoint(_chunk_nll, model, h[start:start + chunk_tokens], t[start:start + chunk_tokens],
                                   use_reentrant=False)
    return total, n


# ---- training ---------------------------------------------------------------------------


def train_neurons(model: nn.Module, tokenizer: Any, texts: Sequence[str], neurons: NeuronSet,
                  settings: EnhanceSettings | None = None, on_step: Callable[[StepInfo], None] | None = None, *,
                  restore: bool = True, chunk_tokens: int | None = None,
                  metadata: dict[str, Any] | None = None) -> EnhanceResult:
    """Fine-tune only `neurons` of `model` on `texts`; return the changed slices as a Delta.

    With ``restore=True`` (default) the model's weights are bit-identical to before on
    return (apply the result with :func:`~neuronspec.enhance.delta.apply_delta`); with
    ``restore=False`` the trained slices stay written in. Every parameter outside the set
    is never written either way, and on an error the original slices are restored.
    The model is left in eval mode with its ``requires_grad`` flags as they were.
    """
    settings = settings or EnhanceSettings()
    if not neurons:
        raise ValueError("the neuron set is empty: nothing to fine-tune")
    encodings = [e for e in encode(tokenizer, list(texts), settings.seq_len) if len(e) >= 2]
    if not encodings:
        raise ValueError("no text has two or more tokens: nothing to train on")
    steps_per_epoch = math.ceil(len(encodings) / settings.effective_batch)
    total_steps = settings.epochs * steps_per_epoch
    pad_id = pad_token_id(model, tokenizer)

    model.eval()
    slots = _make_slots(model, neurons)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    handles = _register_taps(model, slots)
    compacts = [s.compact for s in slots]
    optimizer = torch.optim.AdamW(compacts, lr=settings.lr, betas=(settings.adam_beta1, settings.adam_beta2),
                                  eps=settings.adam_eps, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    norms: list[float] = []
    lrs: list[float] = []
    tokens = 0
    t_start = time.perf_counter()
    ok = False
    try:
        step = 0
        for _epoch in range(settings.epochs):
            order = torch.randperm(len(encodings), generator=gen).tolist()
            for s0 in range(0, len(order), settings.effective_batch):
                t0 = time.perf_counter()
                docs = [encodings[i] for i in order[s0:s0 + settings.effective_batch]]
                n_tok = sum(len(d) - 1 for d in docs)
                loss_sum = 0.0
                for batch in iter_batches(docs, batch_size=settings.micro_batch, pad_id=pad_id):
                    nll, _ = nll_sum(model, batch.input_ids, batch.attention_mask, chunk_tokens=chunk_tokens)
                    (nll / n_tok).backward()
                    loss_sum += float(nll.detach())
                for c in compacts:
                    if c.grad is None:
                        c.grad = torch.zeros_like(c)
                if settings.max_grad_norm is not None:
                    norm = float(torch.nn.utils.clip_grad_norm_(compacts, settings.max_grad_norm))
                else:
                    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(c.grad)
                                                                        for c in compacts])))
                lr = lr_at(settings, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _write(slots)
                step += 1
                tokens += n_tok
                losses.append(loss_sum / n_tok)
                norms.append(norm)
                lrs.append(lr)
                if on_step is not None:
                    on_step(StepInfo(step, total_steps, losses[-1], lr, norm, n_tok, time.perf_counter() - t0))
        entries = {s.name: DeltaEntry(s.dim, s.coords.cpu().clone(), read_slices(s.param.detach(), s.dim, s.coords)
                                      .cpu().clone()) for s in slots}
        state_bytes = optimizer_state_bytes(optimizer)
        ok = True
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        if restore or not ok:
            _write(slots, originals=True)
        model.eval()

    meta = {"settings": settings.to_dict(), "neurons": neurons.per_layer_counts(), "steps": total_steps,
            "tokens": tokens, "documents": len(encodings), "final_loss": losses[-1] if losses else None,
            **(metadata or {})}
    return EnhanceResult(
        delta=Delta(entries, meta), losses=losses, steps=total_steps, tokens=tokens,
        optimizer_state_bytes=state_bytes, trainable_params=sum(c.numel() for c in compacts),
        grad_norms=norms, lrs=lrs, seconds=time.perf_counter() - t_start,
        full_adam_state_bytes=full_adam_state_bytes(model),
    )
