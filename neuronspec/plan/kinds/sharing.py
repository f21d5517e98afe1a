"""Sharing Matters: neuron categories from activation statistics, and the attribution of the output to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.activations import load_activations, require_parallel
from neuronspec.plan.kinds.base import Batched, Context, StageSpec, batches, jsonable, read_docs
from neuronspec.spec.detection import SHARING_EVENTS, SharingEvent
from neuronspec.spec.models import AttributionSpec


class SharingSelect(StageSpec):
    corpus: str
    event: SharingEvent
    thresholds: list[float]
    set_threshold: float | None
    min_fraction: float
    attribution: AttributionSpec | None


def select_sharing(ctx: Context, stage: Stage, s: SharingSelect, out: Path) -> None:
    from neuronspec.methods.sharing import plot_shares, sharing

    stats, item_ids = load_activations(ctx, stage)
    require_parallel(stage, item_ids)
    layers = next(iter(stats.values())).num_layers
    acts = {lang: st.pooled[SHARING_EVENTS[s.event]] for lang, st in stats.items()}
    result = sharing(acts, layers, taus=s.thresholds,
                     set_tau=s.set_threshold, min_fraction=s.min_fraction)
    for lang, ns in result.specific.items():
        ns.save(out / artifacts.set_file("sharing", lang))
    result.all_shared.save(out / artifacts.set_file("sharing.all_shared"))
    summary = {**jsonable(result.to_json()), "event": s.event}
    attr_deps = [d for d in stage.deps if ctx.plan.stages[d].kind == "attr.sharing"]
    if attr_deps:
        summary["attribution"] = _sharing_attribution(ctx, stage, attr_deps, acts, item_ids[0], result.set_tau, out)
    write_json(out / artifacts.RESULT, summary)
    plot_shares(result.shares[str(result.set_tau)], out / "sharing.png")


def _sharing_attribution(ctx: Any, stage: Stage, deps: list[str], acts: dict[str, Any], item_ids: list[str], tau: float,
                         out: Path) -> dict[str, Any]:
    """select/sharing's `attribution` section: the |attribution| mass of each category at τ, from the
    attr/sharing/LANG stages; each item's categories come from the same items' activations `acts`
    (language → [items, L*I], the event's pooled matrix)."""
    import torch
    from safetensors.torch import load_file

    from neuronspec.methods.sharing import attribution_by_category, item_categories, plot_attribution

    infos = {ctx.plan.stages[dep].lang: ctx.input(stage, dep) for dep in deps}
    langs = [lang for lang in acts if lang in infos]
    meta = {lang: infos[lang].json() for lang in langs}
    first = meta[langs[0]]
    for lang in langs:
        if meta[lang]["ids"] != item_ids[: len(meta[lang]["ids"])] or meta[lang]["ids"] != first["ids"]:
            raise ValueError(f"{stage.id}: the attributed items of {lang!r} are not the first items of the sharing corpus")
    attributions = torch.stack([load_file(str(infos[lang].file(artifacts.ATTRIBUTIONS)))["attributions"] for lang in langs])
    codes = item_categories(acts, range(len(first["ids"])), tau)
    section = attribution_by_category(codes, attributions, first["layers"])
    section.update(method=first["method"], tau=tau, ids=first["ids"], attributed_languages=langs,
                   per_language={lang: {c: v["share"] for c, v in attribution_by_category(
                       codes, attributions[i], first["layers"])["overall"].items()} for i, lang in enumerate(langs)})
    if first["method"] == "ig":
        section.update(steps=first["steps"], rule=first["rule"],
                       max_abs_completeness_gap=max(meta[lang]["max_abs_completeness_gap"] for lang in langs),
                       max_relative_completeness_gap=max(meta[lang]["max_relative_completeness_gap"] for lang in langs))
    plot_attribution(section, out / "sharing-attribution.png",
                     title=f"share of |attribution| per layer by neuron category (τ={tau}, {first['method']})")
    return section


# -- attribution of the output to ffn neurons (Sharing Matters) --------------------------
class SharingAttribution(Batched):
    lang: str
    corpus: str
    max_tokens: int
    method: Literal["ig", "activation_norm"]
    docs: int
    layers: list[int] | None
    # ig only (None for activation_norm, so its key ignores the quadrature settings)
    steps: int | None
    step_batch: int | None
    probes: int | None


def attr_sharing(ctx: Context, stage: Stage, s: SharingAttribution, out: Path) -> None:
    """Per item and ffn neuron, IG (or |a|·‖W_down‖) for the first `docs` items of LANG.

    IG runs one layer at a time over the same batches, so progress counts items × layers;
    each (batch, layer) is an independent integral, so this equals one call over all layers.
    """
    import warnings

    import torch
    from safetensors.torch import save_file

    from neuronspec.methods.activations import activation_statistics
    from neuronspec.methods.attribution import (
        CompletenessWarning,
        IGResult,
        activation_norm_scores,
        integrated_gradients,
    )
    from neuronspec.models.forward import encode
    from neuronspec.models.sites import adapter_for

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)[: s.docs]
    if not docs:
        raise ValueError(f"{stage.id}: corpus {s.corpus!r} has no documents for {s.lang!r}")
    lm = ctx.model()
    num_layers = adapter_for(lm.model.config).dims(lm.model.config).num_layers
    layers = list(range(num_layers)) if s.layers is None else list(s.layers)
    encodings = encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens)
    summary: dict[str, Any] = {"lang": s.lang, "method": s.method, "docs": len(docs), "ids": [d["id"] for d in docs],
                               "layers": layers, "tokens": sum(len(e) for e in encodings)}
    if s.method == "ig":
        parts = []
        with ctx.progress(f"integrated gradients {s.lang} ({len(layers)} layers)", total=len(encodings) * len(layers)) as advance:
            for layer in layers:
                parts.append(integrated_gradients(lm.model, batches(encodings, s, lm, advance), layers=[layer],
                                                  steps=s.steps, step_batch=s.step_batch, probes=s.probes,
                                                  n_samples=len(encodings), tolerance=None))
        result = IGResult(layers, torch.cat([p.attributions for p in parts], 1), parts[0].f_input,
                          torch.cat([p.f_baseline for p in parts], 1), s.steps, parts[0].rule)
        gap = result.completeness_gap
        relative = gap.abs() / (result.f_input[:, None] - result.f_baseline).double().abs().clamp_min(0.1)
        tensors = result.to_tensors()
        summary.update(result.to_json(), max_relative_completeness_gap=float(relative.max()),
                       f_input=result.f_input.tolist(), f_baseline=result.f_baseline.tolist(),
                       completeness_gap=gap.tolist())
        if float(relative.max()) > 0.05:
            warnings.warn(f"{stage.id}: Integrated Gradients miss f(a) - f(0) by up to {float(relative.max()):.1%} "
                          f"with {s.steps} steps; raise detect.sharing.attribution.steps (and probes)",
                          CompletenessWarning, stacklevel=2)
    else:
        with ctx.progress(f"activation norms {s.lang}", total=len(encodings)) as advance:
            stats = activation_statistics(lm.model, batches(encodings, s, lm, advance), poolings=["mean_abs"],
                                          thresholds=(), n_samples=len(encodings))
        scores = activation_norm_scores(lm.model, stats.pooled["mean_abs"])[:, layers]
        tensors = {"attributions": scores.contiguous(), "layers": torch.tensor(layers, dtype=torch.int64)}
    save_file(tensors, str(out / artifacts.ATTRIBUTIONS))
    write_json(out / artifacts.RESULT, summary)
