"""One streaming pass that collects the ``ffn`` activation statistics several methods share.

Activation statistics that two methods need are computed once:
LinguaFranca and Sharing Matters need per-sample pooled activations, LAPE needs
per-neuron activation counts. :func:`activation_statistics` runs the decoder once over a list of batches
(:func:`~neuronspec.models.forward.hidden_forward`: no final norm, no unembedding) with
forward hooks and keeps only what was requested:

* ``pooled[name]`` — one row per sample, all layers concatenated, ``[n, L * I]``
  (layer i occupies columns ``i*I : (i+1)*I``):

  - ``"mean"``      mean of the ffn neuron over the sample's counted tokens (LinguaFranca);
  - ``"mean_abs"``  mean of its absolute value (for |activation|·‖W_down[:,k]‖ scores);
  - ``"last"``      its value at the sample's last real token;
  - ``"act_mean"``  mean of the *gate's activation* act(gate·x) over the counted tokens (a plain
    MLP has no separate gate: there it is the neuron itself, as in ``"mean"``);
  - ``"act_last"``  act(gate·x) at the sample's last real token — what Sharing Matters'
    reference notebooks threshold (the MLP nonlinearity's output at the prompt's last token).

* ``counts`` — ``[len(thresholds), L, I]`` int64: counted tokens whose neuron value is
  > τ, for each τ in ``thresholds`` (LAPE's activation probability is counts / tokens);
* ``gate_counts`` — ``[L, I]`` int64: counted tokens whose *gate* pre-activation z is
  > 0. For SiLU / GELU / ReLU, act(z) > 0 ⇔ z > 0, so this is exactly the paper's LAPE
  event "act_fn(gate·x) > 0" on gated MLPs (Llama, Gemma, ...). The product
  act(gate·x)·(up·x) that is our ``ffn`` neuron is positive about half the time
  whatever the language, which blurs LAPE. For plain MLPs (GPT-2, BLOOM) the gate
  is fc1 and ``gate_counts == counts`` at τ = 0;
"Counted tokens" are the non-padding tokens minus the first one of each sample when
``skip_first`` (default, as in PLND): the first position sees only the BOS token, so its
activations are identical for every sample and carry no information about the text.
``last`` always reads the last real token.

Batches may be packed (:func:`~neuronspec.models.forward.iter_packed`: several samples per
row, no padding computed): every statistic is gathered by the sample each token belongs
to, so a packed pass gives each sample what a padded one does.

Expert neurons of a mixture-of-experts layer (Mixtral, Qwen2-MoE) are read from the experts
module's call, one expert at a time, and are 0 on tokens their expert was not routed
(:mod:`~neuronspec.methods.activations_moe`): every statistic above then follows unchanged.

Memory is O(L·I) for the counts plus the per-sample matrices (n × L·I, by design);
nothing per token is kept beyond the current batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neuronspec.methods.activations_moe import Fold, expert_hooks
from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.sites import adapter_for

POOLINGS: tuple[str, ...] = ("mean", "mean_abs", "last", "act_mean", "act_last")
#: poolings read from the gate's activation act(gate·x) rather than from the ffn neuron
ACT_POOLINGS = ("act_mean", "act_last")


@dataclass
class ActivationStats:
    """What one :func:`activation_statistics` pass kept. Rows follow ``Batch.index``."""

    num_layers: int
    width: int  # ffn neurons per layer (intermediate size)
    hidden: int
    n_samples: int
    tokens: int  # counted tokens over all samples
    sample_tokens: Tensor  # [n] int64, counted tokens per sample
    pooled: dict[str, Tensor] = field(default_factory=dict)  # name -> [n, L*I]
    thresholds: tuple[float, ...] = ()
    counts: Tensor | None = None  # [len(thresholds), L, I] int64
    gate_counts: Tensor | None = None  # [L, I] int64

    # ---- views ------------------------------------------------------------------
    def layer_slice(self, layer: int) -> slice:
        """Columns of `layer` in a pooled matrix."""
        return slice(layer * self.width, (layer + 1) * self.width)

    def per_layer(self, name: str = "mean") -> Tensor:
        """A pooled matrix viewed as [n, L, I]."""
        return self.pooled[name].view(self.n_samples, self.num_layers, self.width)

    def probability(self, tau: float = 0.0) -> Tensor:
        """P(neuron > τ) over counted tokens, [L, I] float64 (needs τ in ``thresholds``)."""
        if self.counts is None:
            raise ValueError("this pass collected no threshold counts")
        matches = [i for i, t in enumerate(self.thresholds) if t == float(tau)]
        if not matches:
            raise KeyError(f"τ={tau} was not collected; thresholds: {list(self.thresholds)}")
        return self.counts[matches[0]].double() / max(self.tokens, 1)

    def gate_probability(self) -> Tensor:
        """P(act(gate) > 0) over counted tokens, [L, I] float64."""
        if self.gate_counts is None:
            raise ValueError("this pass collected no gate counts (gate_counts=False)")
        return self.gate_counts.double() / max(self.tokens, 1)

    # ---- combination ------------------------------------------------------------
    @classmethod
    def concat(cls, parts: Sequence[ActivationStats]) -> ActivationStats:
        """Stack the samples of several passes (rows in order) and add their counts."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:  # one pass (every single-process run): nothing to stack, no copy
            return parts[0]
        first = parts[0]
        for p in parts[1:]:
            if (p.num_layers, p.width, p.hidden, p.thresholds, sorted(p.pooled)) != (
                    first.num_layers, first.width, first.hidden, first.thresholds, sorted(first.pooled)):
                raise ValueError("passes collected different statistics or come from different models")
            if (p.counts is None) != (first.counts is None) or (p.gate_counts is None) != (first.gate_counts is None):
                raise ValueError("passes collected different statistics")
        return cls(
            num_layers=first.num_layers, width=first.width, hidden=first.hidden,
            n_samples=sum(p.n_samples for p in parts), tokens=sum(p.tokens for p in parts),
            sample_tokens=torch.cat([p.sample_tokens for p in parts]),
            pooled={k: torch.cat([p.pooled[k] for p in parts]) for k in first.pooled},
            thresholds=first.thresholds,
            counts=None if first.counts is None else sum(p.counts for p in parts),  # type: ignore[misc]
            gate_counts=None if first.gate_counts is None else sum(p.gate_counts for p in parts),  # type: ignore[misc]
        )

    # ---- persistence (safetensors-ready: flat dict of contiguous tensors) --------
    def to_tensors(self) -> dict[str, Tensor]:
        out = {
            "meta": torch.tensor([self.num_layers, self.width, self.hidden, self.n_samples, self.tokens], dtype=torch.int64),
            "sample_tokens": self.sample_tokens,
            "thresholds": torch.tensor(self.thresholds, dtype=torch.float64),
        }
        for name, matrix in self.pooled.items():
            out[f"pooled/{name}"] = matrix
        if self.counts is not None:
            out["counts"] = self.counts
        if self.gate_counts is not None:
            out["gate_counts"] = self.gate_counts
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> ActivationStats:
        num_layers, width, hidden, n, tokens = (int(v) for v in tensors["meta"].tolist())
        return cls(
            num_layers=num_layers, width=width, hidden=hidden, n_samples=n, tokens=tokens,
            sample_tokens=tensors["sample_tokens"],
            pooled={k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("pooled/")},
            thresholds=tuple(float(t) for t in tensors["thresholds"].tolist()),
            counts=tensors.get("counts"), gate_counts=tensors.get("gate_counts"),
        )


def gate_module(model: nn.Module, layer: int) -> tuple[nn.Module, Tensor]:
    """(module, coordinates): the module whose output, at those coordinates, is the pre-activation
    that the MLP's activation reads.

    Gated MLPs: the adapters list ``ffn_in_slices`` as [up, gate] (see ``GatedAdapter.ffn_in``),
    so the gate is the last entry; plain MLPs have a single fc1. A fused gate/up projection
    (Phi-3) is one module whose gate half the coordinates pick. (Looked up through the
    config's adapter: ``adapter_for(model)`` re-checks every site's shapes on each call.)
    """
    adapter = adapter_for(model.config)
    slices = adapter.ffn_in_slices(model, layer)
    if len(slices) not in (1, 2):
        raise ValueError(f"expected [fc1] or [up, gate] feeding the ffn neurons, got {len(slices)} modules")
    module, index_fn = slices[-1]
    return module, index_fn(torch.arange(adapter.dims(model.config).intermediate))


class _Collector:
    """Hooks that fold one batch into the running statistics."""

    def __init__(self, model: nn.Module, poolings: Sequence[str], thresholds: Sequence[float],
                 gate_counts: bool) -> None:
        self.adapter = adapter_for(model)
        self.dims = self.adapter.dims(model.config)
        self.model = model
        self.poolings, self.thresholds = list(poolings), [float(t) for t in thresholds]
        self.want_gate = gate_counts
        device = next(model.parameters()).device
        L, W = self.dims.num_layers, self.dims.intermediate
        self.counts = torch.zeros(len(self.thresholds), L, W, dtype=torch.int64, device=device) if self.thresholds else None
        self.gate = torch.zeros(L, W, dtype=torch.int64, device=device) if gate_counts else None
        # per batch (tokens flattened over rows: a packed row holds several samples)
        self.n = 0  # samples in the batch
        self.owner: Tensor | None = None  # [kept tokens] sample of each counted token
        self.keep: Tensor | None = None  # [B * T] bool, counted tokens (flattened as the hooks see them)
        self.sample_tokens: Tensor | None = None  # [n] counted tokens per sample
        self.last: Tensor | None = None  # [n] flat index of each sample's last real token
        self.rows: dict[str, list[Tensor | None]] = {}

    def start(self, batch: Batch, skip_first: bool, device: torch.device) -> None:
        owners = batch.owners().to(device)
        real = owners >= 0
        keep = real & (batch.positions().to(device) > 0) if skip_first else real
        self.keep = keep.flatten()
        self.n = len(batch.index)
        self.owner = owners[keep]
        self.sample_tokens = torch.bincount(self.owner, minlength=self.n)
        flat = torch.arange(owners.numel(), device=device).view_as(owners)
        self.last = torch.full((self.n,), -1, dtype=torch.int64, device=device).scatter_reduce(
            0, owners[real], flat[real], "amax")
        L = self.dims.num_layers
        self.rows = {p: [None] * L for p in self.poolings}

    def hooks(self) -> list:
        handles = []
        want_act = any(p in ACT_POOLINGS for p in self.poolings)
        for i in range(self.dims.num_layers):
            if self.adapter.routed_ffn:  # expert neurons: read from the experts' call (methods/activations_moe.py)
                own = [p for p in self.poolings if p not in ACT_POOLINGS]
                acts = [p for p in self.poolings if p in ACT_POOLINGS]
                handles += expert_hooks(self.adapter, self.model, i, self._fold(i, own) if own or self.thresholds else None,
                                        self._fold_gate(i) if self.want_gate else None,
                                        self._fold(i, acts, thresholds=False) if acts else None)
                continue
            act = self.adapter.ffn_act(self.model, i) if want_act else None
            if self.poolings or self.thresholds:
                # a plain MLP has no gate module: there the neuron is also the act_* poolings' value
                own = [p for p in self.poolings if p not in ACT_POOLINGS or act is None]
                fold = self._fold(i, own)
                handles.append(self.adapter.ffn_down(self.model, i).register_forward_pre_hook(
                    lambda module, args, fold=fold: fold(args[0].reshape(-1, args[0].shape[-1]), slice(None))))
            if act is not None:
                fold_act = self._fold(i, [p for p in self.poolings if p in ACT_POOLINGS], thresholds=False)
                handles.append(act.register_forward_hook(
                    lambda module, args, out, fold=fold_act: fold(out.reshape(-1, out.shape[-1]), slice(None))))
            if self.want_gate:
                module, coords = gate_module(self.model, i)
                fold_gate = self._fold_gate(i)
                coords = coords.to(self.gate.device)
                handles.append(module.register_forward_hook(
                    lambda module, args, out, g=fold_gate, c=coords: g(out.reshape(-1, out.shape[-1])[:, c] > 0, slice(None))))
        return handles

    def _sum(self, kept: Tensor) -> Tensor:
        """[n, I]: per-sample mean of `kept` ([counted tokens, I]) over its counted tokens."""
        total = torch.zeros(self.n, kept.shape[1], dtype=kept.dtype, device=kept.device).index_add_(0, self.owner, kept)
        return total / self.sample_tokens.clamp_min(1)[:, None]

    def _fold(self, i: int, poolings: Sequence[str], thresholds: bool = True) -> Fold:
        """Folds values [B*T tokens, w] of layer `i`'s columns `cols` into the batch's `poolings` (and,
        with `thresholds`, the threshold counts)."""
        def fold(values: Tensor, cols: slice) -> None:
            a = values.detach().float()
            kept = a[self.keep]  # [tokens, w]
            for p in poolings:
                if self.rows[p][i] is None:
                    self.rows[p][i] = torch.zeros(self.n, self.dims.intermediate, device=a.device)
                if p in ("mean", "act_mean"):
                    self.rows[p][i][:, cols] = self._sum(kept)
                elif p == "mean_abs":
                    self.rows[p][i][:, cols] = self._sum(kept.abs())
                else:  # last, act_last
                    self.rows[p][i][:, cols] = a[self.last]
            if thresholds:
                for j, tau in enumerate(self.thresholds):
                    self.counts[j, i, cols] += (kept > tau).sum(0)
        return fold

    def _fold_gate(self, i: int) -> Fold:
        """Folds gate events [B*T tokens, w] (bool: act(gate) > 0) of layer `i`'s columns `cols`."""
        def fold(fired: Tensor, cols: slice) -> None:
            self.gate[i, cols] += fired[self.keep].sum(0)
        return fold


@torch.no_grad()
def activation_statistics(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    poolings: Sequence[str] = ("mean",),
    thresholds: Sequence[float] = (0.0,),
    gate_counts: bool = False,
    pooled_dtype: torch.dtype = torch.float32,
    skip_first: bool = True,
    n_samples: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ActivationStats:
    """Stream `batches` through `model` once; keep the requested ffn statistics.

    ``poolings`` ⊆ {"mean", "mean_abs", "last"}; ``thresholds`` are the τ of the token
    counts (empty = no counts); ``gate_counts`` adds the LAPE gate event. Per-sample rows are placed at
    ``Batch.index``; ``n_samples`` defaults to 1 + the largest index, and every row in
    ``range(n_samples)`` must be covered exactly once.
    """
    for p in poolings:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling {p!r}; valid: {', '.join(POOLINGS)}")
    collector = _Collector(model, list(dict.fromkeys(poolings)), thresholds, gate_counts)
    dims = collector.dims
    L, W = dims.num_layers, dims.intermediate
    device = next(model.parameters()).device
    rows = _Rows(collector.poolings, L * W, pooled_dtype, n_samples)
    tokens = 0
    handles = collector.hooks()
    try:
        for batch in batches:
            collector.start(batch, skip_first, device)
            hidden_forward(model, batch.input_ids, batch.attention_mask, last_layer=L - 1, position_ids=batch.position_ids)
            per_sample = collector.sample_tokens.cpu()
            tokens += int(per_sample.sum())
            rows.add(list(batch.index), per_sample,
                     {p: torch.cat(collector.rows[p], dim=1).to("cpu", pooled_dtype) for p in collector.poolings})
            if on_batch:
                on_batch(len(batch.index))
    finally:
        for h in handles:
            h.remove()
    n, sample_tokens, pooled = rows.finish()
    return ActivationStats(
        num_layers=L, width=W, hidden=dims.hidden, n_samples=n, tokens=tokens, sample_tokens=sample_tokens,
        pooled=pooled, thresholds=tuple(collector.thresholds),
        counts=None if collector.counts is None else collector.counts.cpu(),
        gate_counts=None if collector.gate is None else collector.gate.cpu(),
    )


class _Rows:
    """Per-sample rows placed at ``Batch.index``: written straight into preallocated
    matrices when the sample count is known, else buffered per batch and placed at the end."""

    def __init__(self, poolings: list[str], columns: int, dtype: torch.dtype, n: int | None) -> None:
        self.poolings, self.columns, self.dtype, self.n = poolings, columns, dtype, n
        self.seen = torch.zeros(0, dtype=torch.int64)
        self.buffer: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []
        if n is not None:
            self._allocate(n)

    def _allocate(self, n: int) -> None:
        self.sample_tokens = torch.zeros(n, dtype=torch.int64)
        self.pooled = {p: torch.empty(n, self.columns, dtype=self.dtype) for p in self.poolings}

    def _place(self, where: Tensor, per_sample: Tensor, rows: dict[str, Tensor]) -> None:
        self.sample_tokens[where] = per_sample
        for p, r in rows.items():
            self.pooled[p][where] = r

    def add(self, index: list[int], per_sample: Tensor, rows: dict[str, Tensor]) -> None:
        where = torch.as_tensor(index, dtype=torch.int64)
        if self.n is not None and where.numel() and (int(where.min()) < 0 or int(where.max()) >= self.n):
            raise ValueError(f"sample index out of range [0, {self.n}): {where.tolist()[:5]}")
        self.seen = torch.cat([self.seen, where])
        if self.n is not None:
            self._place(where, per_sample, rows)
        else:
            self.buffer.append((where, per_sample, rows))

    def finish(self) -> tuple[int, Tensor, dict[str, Tensor]]:
        n = self.n if self.n is not None else (int(self.seen.max()) + 1 if self.seen.numel() else 0)
        counts = torch.bincount(self.seen, minlength=n) if self.seen.numel() else torch.zeros(n, dtype=torch.int64)
        if self.seen.numel() and int(self.seen.min()) < 0:
            raise ValueError("sample indices must be >= 0")
        if not bool((counts == 1).all()):
            missing = (counts == 0).nonzero().flatten()[:5].tolist()
            repeated = (counts > 1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"batches must cover sample indices 0..{n - 1} exactly once "
                             f"(missing {missing}, repeated {repeated})")
        if self.n is None:
            self._allocate(n)
            for item in self.buffer:
                self._place(*item)
            self.buffer.clear()
        return n, self.sample_tokens, self.pooled
