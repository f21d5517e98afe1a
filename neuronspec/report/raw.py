"""The raw numbers behind a run, per neuron and per document, read from the files its stages stored
beside their result.json (which the report, and so `Results.data`, never reads): a detector's
statistics for a language, the activations it pooled per document, an evaluation's per-document
values. Each comes as `Columns` (name → equal-length 1-D numpy array) that the Python API turns
into a DataFrame: columns, not row objects, since a 7B model has millions of neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neuronspec.plan import ids
from neuronspec.plan.kinds import artifacts

#: detector → the kind of the statistics stage it selects from
STAT_KINDS = {"plnd": "stats.plnd", "lape": "stats.act", "linguafranca": "stats.act", "sharing": "stats.act"}
#: evaluators that keep a value per document
PER_DOCUMENT = ("perplexity",)


@dataclass(frozen=True)
class Columns:
    """Equal-length 1-D arrays by column name, in order (a DataFrame's data without pandas)."""

    data: dict[str, np.ndarray]


def stats_stage(record: dict[str, Any], method: str, language: str, model: str | None) -> str:
    """The id of the stage that holds `method`'s statistics for `language`, or a KeyError saying what there is."""
    if method not in STAT_KINDS:
        raise KeyError(f"no statistics for {method!r}: detectors with statistics are {', '.join(STAT_KINDS)}")
    detect = record.get("study", {}).get("detect", {}) or {}
    if not detect.get(method):
        ran = ", ".join(m for m in STAT_KINDS if detect.get(m)) or "none"
        raise KeyError(f"run {record.get('run_id')} did not run {method} (detectors: {ran})")
    sid = ids.stats_plnd(language) if method == "plnd" else ids.stats_act(detect[method]["corpus"], language)
    stages = record.get("stages", {})
    if ids.qualified(model, sid) not in stages:
        langs = sorted(e.get("lang") for s, e in stages.items() if e.get("kind") == STAT_KINDS[method] and e.get("lang"))
        raise KeyError(f"no {method} statistics for {language!r} (languages: {', '.join(dict.fromkeys(langs)) or 'none'})")
    return ids.qualified(model, sid)


def statistics(record: dict[str, Any], store: Any, method: str, language: str, model: str | None) -> Columns:
    """`method`'s per-neuron statistics for `language` (plnd_columns or activation_columns)."""
    from safetensors.torch import load_file

    entry = store.get(record["stages"][stats_stage(record, method, language, model)]["key"])
    if method == "plnd":
        return plnd_columns(load_file(str(entry.file(artifacts.STATS))))
    return activation_columns(_activations(entry))


@dataclass(frozen=True)
class Pooled:
    """An activation pass's pooled ffn activations: one row per document, layer-major columns."""

    documents: list[str]
    values: np.ndarray  # [documents, layers * width]
    layers: int
    width: int


def pooled(record: dict[str, Any], store: Any, method: str, language: str, pooling: str, model: str | None) -> Pooled:
    if STAT_KINDS.get(method) != "stats.act":
        raise KeyError(f"{method!r} keeps no activations per document; "
                       f"{', '.join(m for m, k in STAT_KINDS.items() if k == 'stats.act')} read them")
    entry = store.get(record["stages"][stats_stage(record, method, language, model)]["key"])
    stats = _activations(entry)
    if pooling not in stats.pooled:
        raise KeyError(f"the {method} pass for {language!r} pooled no {pooling!r} (pooled: {', '.join(stats.pooled) or 'none'})")
    return Pooled(list(entry.json()["ids"]), stats.pooled[pooling].numpy(), stats.num_layers, stats.width)


def _activations(entry: Any) -> Any:
    from safetensors.torch import load_file

    from neuronspec.methods.activations import ActivationStats

    return ActivationStats.from_tensors(load_file(str(entry.file(artifacts.ACTIVATIONS))))


def plnd_columns(tensors: dict[str, Any]) -> Columns:
    """Per (site, layer, neuron): documents, the smallest importance over them, mean, sum, sum of
    squares (std = √(sumsq/docs − mean²)) and, for rule topk_intersect, documents where it was in the top k."""
    parts: dict[str, list[np.ndarray]] = {}
    for key in tensors:
        site, _, stat = key.rpartition("/")
        if stat != "min" or "/" in site:  # "half0/ffn/min": the split-half statistics of the stability check
            continue
        shape = tuple(tensors[key].shape)  # [layers, width]
        docs = int(tensors[f"{site}/n_docs"])
        layer, neuron = np.indices(shape)
        total = tensors[f"{site}/sum"].double().numpy()
        columns = {"site": np.full(layer.size, site, dtype=object), "layer": layer, "neuron": neuron,
                   "docs": np.full(shape, docs), "min": tensors[key].double().numpy(),
                   "mean": total / docs if docs else np.full(shape, np.nan), "sum": total,
                   "sumsq": tensors[f"{site}/sumsq"].double().numpy(), "topk_hits": tensors[f"{site}/topk_hits"].numpy()}
        for name, values in columns.items():
            parts.setdefault(name, []).append(np.asarray(values).reshape(-1))
    return Columns({name: np.concatenate(values) for name, values in parts.items()})


def activation_columns(stats: Any) -> Columns:
    """Per ffn (layer, neuron) of an activation pass: its counted tokens, and how many had the gate
    pre-activation > 0 (LAPE's event) and the neuron > τ for each threshold τ the pass counted."""
    shape = (stats.num_layers, stats.width)
    layer, neuron = np.indices(shape)
    columns = {"site": np.full(layer.size, "ffn", dtype=object), "layer": layer.reshape(-1), "neuron": neuron.reshape(-1),
               "tokens": np.full(layer.size, stats.tokens)}
    if stats.gate_counts is not None:
        columns["gate_active"] = stats.gate_counts.numpy().reshape(-1)
    for k, tau in enumerate(stats.thresholds):
        columns[f"active_above_{tau:g}"] = stats.counts[k].numpy().reshape(-1)
    return Columns(columns)


def evaluation_documents(record: dict[str, Any], store: Any, evaluation: str, model: str | None) -> Columns:
    """One row per document of every cell of `evaluation`: arm, draw, deactivated and evaluated
    language, the document's id (from the corpus stage it read), its summed NLL and predicted tokens."""
    from neuronspec.plan.kinds import read_docs

    stages = record.get("stages", {})
    cells = [(sid, e) for sid, e in stages.items() if e.get("evaluation") == evaluation and e.get("kind") == "eval"
             and sid == ids.qualified(model, ids.evaluation(evaluation, e["spec"]["arm"], e["spec"]["lang"],
                                                             draw=e["spec"].get("draw"), mask_lang=e["spec"]["mask_lang"]))]
    if not cells:
        names = sorted({e.get("evaluation") for e in stages.values() if e.get("evaluation")})
        raise KeyError(f"run {record.get('run_id')} has no evaluation {evaluation!r} of neuronspec's own metrics "
                       f"(evaluations: {', '.join(names) or 'none'})")
    metric = cells[0][1]["spec"]["metric"]
    if metric not in PER_DOCUMENT:
        raise KeyError(f"evaluation {evaluation!r} ({metric}) keeps no value per document; {', '.join(PER_DOCUMENT)} does")
    rows: dict[str, list[Any]] = {k: [] for k in ("arm", "draw", "deactivated", "evaluated", "document", "nll", "tokens")}
    for sid, e in cells:
        result = store.get(e["key"]).json()
        corpus = next(d for d in e["deps"] if stages[d]["kind"] == "corpus")
        docs = read_docs(store.get(stages[corpus]["key"]), e["spec"]["lang"])
        if len(docs) != len(result["doc_nll"]):
            raise ValueError(f"{sid}: {len(result['doc_nll'])} per-document values for {len(docs)} documents")
        n = len(docs)
        rows["arm"] += [e["spec"]["arm"] or "base"] * n
        rows["draw"] += [e["spec"].get("draw")] * n
        rows["deactivated"] += [e["spec"]["mask_lang"]] * n
        rows["evaluated"] += [e["spec"]["lang"]] * n
        rows["document"] += [d["id"] for d in docs]
        rows["nll"] += result["doc_nll"]
        rows["tokens"] += result["doc_tokens"]
    return Columns({k: np.array(v, dtype=object if k in ("arm", "draw", "deactivated", "evaluated", "document") else None)
                    for k, v in rows.items()})
