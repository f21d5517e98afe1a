"""Pydantic models of a study file.

A study declares *what* to measure; `neuronspec.plan` decides *how* and caches it.
Every model forbids unknown keys so a typo is an error with a line number, not a
silently ignored setting. Cross-references (sets → detectors, arms → partitions, …)
are checked in `neuronspec.spec.references`, after field validation, so all field
errors are reported together first.
"""


from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_serializer, model_validator

from neuronspec.spec.detection import AnalysesSpec, AttributionSpec, DetectSpec
from neuronspec.spec.fields import (MAX_BOOTSTRAP, NAME_MAX, NAME_PATTERN, SITES, Batching, Key, Languages, LanguageCode,
                                    LayerRange, ModelName, Quantile, Strict, expand_sites)

# what other modules import from here (the study's model is read as one module)
__all__ = ["NAME_MAX", "NAME_PATTERN", "SITES", "AttributionSpec", "LmEvalSpec", "ModelSpec", "Quantile", "Study",
           "expand_sites"]

#: random draws of a deactivate arm's `random_like` control: one draw can hit a critical neuron
DEFAULT_DRAWS = 5


class ModelSpec(Strict):
    """Which checkpoint to study. `id` is an embedded name, a hub id, a folder or a .gguf file."""

    id: str = Field("gemma-3-270m", description="Embedded name (gemma-3-270m, smollm2-135m), hub id, local folder or .gguf path.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(None, description="GGUF file inside `id` when `id` is a folder or repo.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the weights; importances and statistics are accumulated in float32 / float64 whatever it is.")
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="Where the model runs: cpu, cuda, cuda:N, mps, or auto (the first CUDA GPU, else MPS, else the CPU).")
    device_map: Literal["auto"] | None = Field(
        None, description="auto: accelerate spreads a model too large for one GPU over all of them (not combined with torchrun yet).")


class CorpusSpec(Strict):
    """A text source and how much of it to use. Splits are deterministic and disjoint."""

    source: str = Field(description="builtin:NAME, a local .jsonl/.txt/.parquet path ({lang} placeholder allowed) or hf:DATASET.")
    split: Literal["detect", "eval", "all"] = Field(
        "all", description="detect or eval: two disjoint parts of the source, chosen by a hash of each item's id and the "
                           "study seed (so the same items whatever the source's order); all: both.")
    docs_per_language: int | None = Field(
        None, gt=0, description="Exactly this many documents per language, in a seeded hash order (default: all of the split); too few is an error.")
    max_tokens: int = Field(256, gt=1, description="Documents are truncated to this many tokens.")
    eval_fraction: float = Field(0.3, gt=0, lt=1, description="Share of the items that fall in the eval split (the rest are detect).")
    languages: Languages | None = Field(None, description="Subset of the study's languages (default: all).")
    options: dict[str, Any] = Field(default_factory=dict, description="Source-specific options (text_field, config, ...).")


class NeuronsFile(Strict):
    """A neuron set found elsewhere (TransformerLens, nnsight), read from a file. JSON: site → layer → indices,
    e.g. {"ffn": {"3": [17, 2048]}, "attn.q": {"0": [5]}}. safetensors: one 1-D tensor per SITE/LAYER (e.g. ffn/3),
    integer indices or a boolean mask as long as the site's width; `NeuronSet.save` writes such a file. At most
    64 MiB. In YAML flow style quote a path with {lang}: {file: "sets/{lang}.json"}."""

    file: str = Field(
        pattern=r"\.(json|safetensors)$",
        description="Path of a .json ({\"SITE\": {\"LAYER\": [INDEX, ...]}}) or .safetensors (a 1-D tensor per SITE/LAYER: "
                    "integer indices or a boolean mask of the site's width) file, relative to the study file. With "
                    "{lang} in it, one file per study language: a set per language, like a detector's. Checked "
                    "against the model's layers and widths; its content is part of the cache key.")

    @property
    def family(self) -> bool:
        return "{lang}" in self.file

    def path(self, lang: str | None = None) -> str:
        return self.file.replace("{lang}", lang) if lang is not None else self.file


class NeuronSelection(Strict):
    """Which neurons an arm touches: a named set (optionally restricted), or a random match of another arm."""

    neurons: str | None = Field(None, description="A named neuron set (see `neurons`) or a detector name.")
    # An empty list would restrict to nothing; it used to mean "everything": refused instead.
    layers: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="Partition name(s) to restrict to (default: all layers).")
    sites: Annotated[list[Literal["ffn", "attn.q", "attn.k", "attn.v", "attn.o", "attn", "all"]], Field(min_length=1)] | None = Field(
        None, description="Restrict to these sites: ffn, attn (all attention sites) or single sites."
    )
    random_like: str | None = Field(
        None, description="Name of another arm of the same kind: use as many random neurons per site and layer as it does."
    )
    scope: Literal["layer", "partition", "all"] = Field(
        "layer", description="random_like: where the random neurons come from — layer: as many per site and layer as the "
                             "matched arm (the default); partition: as many per site, anywhere in the partition(s) named "
                             "in `layers`; all: as many per site, anywhere in the model (MWork's random controls (i), (ii)).")
    match: Literal["count", "magnitude"] = Field(
        "count", description="random_like: count — as many random neurons per site and layer as the matched arm (as "
                             "`scope` says); magnitude — as many per layer *and per magnitude bin*: each layer's ffn "
                             "neurons ranked by mean |activation| on `match_corpus` and cut into `match_bins` equal-size "
                             "quantile bins, so the control fires as strongly as the set (scope: layer, ffn sets only).")
    match_corpus: str | None = Field(
        None, description="match: magnitude — the corpus whose mean |activation| ranks the neurons (default: "
                          "detect.sharing's corpus); computed in the same activation pass as the methods using it.")
    match_bins: int = Field(10, ge=2, le=1000, description="match: magnitude — quantile bins per layer.")
    count: int | None = Field(
        None, ge=1, description="Keep this many neurons of the set (per language), a seeded uniform subsample — arms of "
                                "equal size from sets of different sizes (the whole set when it is smaller).")
    seed: int | None = Field(None, ge=0, description="Seed for random_like and count (default: the study seed).")
    draws: int | None = Field(
        None, ge=1, le=100,
        description="random_like: independent random draws, each with the matched arm's counts per site and layer "
                    "(default 5 for deactivate arms, 1 for enhance arms); reports show their mean and min–max.",
    )

    def draw_count(self, kind: str) -> int:
        """How many random draws this selection makes (1 for a named set)."""
        if self.random_like is None:
            return 1
        return self.draws if self.draws is not None else (DEFAULT_DRAWS if kind == "deactivate" else 1)

    def partition_names(self) -> list[str]:
        if self.layers is None:
            return []
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)


class DeactivateSpec(NeuronSelection):
    """Switch neurons off while evaluating: their activations set to zero, or to their mean over a corpus."""

    ablation: Literal["zero", "mean"] = Field(
        "zero", description="zero: the neurons output 0; mean: each outputs its mean activation over `mean_corpus` "
                            "(per site, layer and neuron, over every real token), which removes what varies with the "
                            "input but keeps the average contribution the rest of the model expects.")
    mean_corpus: str | None = Field(
        None, description="ablation: mean — the corpus (name in `corpora`) the means are taken over, all its languages "
                          "pooled; keep it disjoint from the evaluation's corpus (split: detect).")

    @model_validator(mode="after")
    def _mean_needs_corpus(self) -> "DeactivateSpec":
        if self.ablation == "mean" and self.mean_corpus is None:
            raise ValueError("ablation: mean takes the means over a corpus: give `mean_corpus`")
        if self.ablation == "zero" and self.mean_corpus is not None:
            raise ValueError("mean_corpus is for ablation: mean; this arm zeroes its neurons")
        return self


class EnhanceSpec(NeuronSelection):
    """Fine-tune only the selected neurons on documents of each language (MWork's enhancement).

    Defaults are the paper's: lr 2e-6, 1 epoch, effective batch 32, sequence length 512,
    gradient-norm clipping 0.3 (on the selected neurons' gradient), cosine schedule with 5% warm-up.
    """

    corpus: str = Field(description="Training corpus (name in `corpora`); keep it disjoint from evaluation corpora (split: detect).")
    docs: int | None = Field(None, gt=0, description="Training documents per language (the paper sweeps 100 / 200 / 400 / 800).")
    languages: Languages | None = Field(None, description="Languages to enhance, each with its own neurons and documents (default: all).")
    lr: float = Field(2e-6, gt=0, description="Peak learning rate of AdamW.")
    epochs: int = Field(1, gt=0, description="Passes over the training documents.")
    effective_batch: int = Field(32, gt=0, description="Documents per optimiser step (gradients accumulated over micro-batches).")
    micro_batch: int = Field(4, gt=0, description="Documents per forward and backward pass.")
    seq_len: int = Field(512, gt=1, description="Training documents are truncated to this many tokens (BOS included).")
    max_grad_norm: float | None = Field(0.3, gt=0, description="Clip the selected neurons' gradient to this norm (null: no clipping).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the optimiser steps spent in linear warm-up.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after the warm-up.")

    def settings(self, seed: int) -> dict[str, Any]:
        keys = ("lr", "epochs", "effective_batch", "micro_batch", "seq_len", "max_grad_norm", "warmup_ratio", "schedule")
        return {k: getattr(self, k) for k in keys} | {"seed": seed}


class ArmSpec(Strict):
    """One intervention on the model, evaluated against the untouched model: give `deactivate` or `enhance`."""

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX,
                      description="Unique arm name; tables, `random_like` and evaluations' `arms` refer to it.")
    deactivate: DeactivateSpec | None = Field(None, description="Switch the selected neurons off while evaluating.")
    enhance: EnhanceSpec | None = Field(None, description="Fine-tune only the selected neurons, then evaluate the result.")
    description: str = Field("", description="Free text for readers of the study; no computation reads it.")

    @model_validator(mode="after")
    def _one_kind(self) -> "ArmSpec":
        if (self.deactivate is None) == (self.enhance is None):
            raise ValueError("an arm either deactivates or enhances: give exactly one of `deactivate`, `enhance`")
        return self

    @property
    def kind(self) -> str:
        return "deactivate" if self.deactivate is not None else "enhance"

    @property
    def selection(self) -> NeuronSelection:
        return self.deactivate if self.deactivate is not None else self.enhance  # type: ignore[return-value]


#: Evaluator-specific options a study may set (checked against the evaluators in tests).
EVALUATION_OPTIONS: dict[str, tuple[str, ...]] = {
    "perplexity": (),
    "choice": ("normalize",),
    "generation": ("max_new_tokens", "stop", "metric"),
}


class ArmsEvaluated(Batching):
    """Which arms an evaluation runs, and how many draws of their random controls."""

    arms: list[str] | None = Field(None, description="Arms to evaluate (default: all). The untouched model is always evaluated.")
    draws: int | None = Field(
        None, ge=1, description="Evaluate only the first N draws of each random control (default: all of its draws), "
                                "e.g. fewer for a language × language matrix than for the main table; the draws "
                                "evaluated are the same ones other evaluations use.")


class EvaluationSpec(ArmsEvaluated):
    """One of neuronspec's own metrics on a corpus, for the untouched model and each arm."""

    metric: Literal["perplexity", "choice", "generation"] = Field(
        description="perplexity: token-weighted, on documents; choice: multiple-choice accuracy by log-likelihood; "
                    "generation: greedy decoding scored by ROUGE-L or language fidelity.")
    corpus: str = Field(description="Name of a corpus in `corpora`.")
    on: Literal["self", "baseline", "all"] = Field(
        "all",
        description="self: evaluate each language's arm only on that language; baseline: on that language and on the "
                    "report's baseline language (MWork's ΔEng when the sets exclude English's neurons); all: on every "
                    "language (the language × language matrix).",
    )
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP, description="Bootstrap resamples for confidence intervals (0: none).")
    options: dict[str, Any] = Field(default_factory=dict, description="Evaluator options: choice: normalize; generation: max_new_tokens, stop, metric (rouge_l | fidelity).")

    @model_validator(mode="after")
    def _known_options(self) -> "EvaluationSpec":
        unknown = sorted(set(self.options) - set(EVALUATION_OPTIONS[self.metric]))
        if unknown:
            allowed = ", ".join(EVALUATION_OPTIONS[self.metric]) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for metric {self.metric!r} (allowed: {allowed})")
        if self.batch_tokens is not None and self.metric == "generation":
            raise ValueError("batch_tokens is not supported for generation (decoding batches by batch_size)")
        return self


class LmEvalSpec(ArmsEvaluated):
    """lm-evaluation-harness tasks run in-process on the stage's (masked or enhanced) model."""

    metric: Literal["lm_eval"] = Field(description="lm_eval: run lm-evaluation-harness tasks.")
    tasks: dict[LanguageCode, str] | Annotated[list[str], Field(min_length=1)] = Field(
        description="Task per study language (e.g. {en: xquad_en, zh: xquad_zh}), or a list of language-neutral tasks.")
    include_path: str | None = Field(
        None, description="Folder of custom task YAMLs, relative to the study file; their local data files are part of the cache key. "
                          "Every *.yaml in it must be readable UTF-8 YAML of at most 1 MiB; at most 10,000 entries, 16 folders "
                          "deep, and no link leading out of it.")
    corpus: str | None = Field(
        None, description="A corpus whose documents (id, text and meta fields) are written per language to a jsonl file that "
                          "task YAMLs read as data_files: '{corpus}'.")
    limit: int | None = Field(None, gt=0, description="Evaluate at most this many items per task.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (default: the task's own).")
    max_length: int | None = Field(
        None, gt=1, description="lm-eval's context window in tokens; longer requests lose tokens from the left. Default: "
                                "for tasks that read the evaluation's corpus, its max_tokens − 1 (lm-eval then cuts prompts "
                                "as `choice` does); else the model's.")
    metric_name: str | None = Field(
        None, description="Which of the task's metrics to report, e.g. acc_norm or exact_match,flexible-extract (default: its first).")
    on: Literal["self", "baseline", "all"] = Field(
        "all", description="self: evaluate each language's arm only on that language's task; baseline: on that language's "
                           "and the report's baseline language's task; all: on every task (the matrix).")
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP, description="lm-eval's bootstrap iterations for the standard error of non-mean metrics.")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        names = list(value.values()) if isinstance(value, dict) else value
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n)]
        if bad:
            raise ValueError(f"task names must be plain names (letters, digits, _ . -), got {bad}")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("tasks must be unique")
        return value

    def task_map(self) -> dict[str, str]:
        """Column of the tables → task: the study language, or the task itself for a language-neutral list."""
        return dict(self.tasks) if isinstance(self.tasks, dict) else {t: t for t in self.tasks}


Evaluation = Annotated[Union[EvaluationSpec, LmEvalSpec], Field(discriminator="metric")]


class ReportSpec(Strict):
    """How the report is rendered (no effect on what is computed)."""

    baseline_language: LanguageCode = Field("en", description="The language of ΔEng in Δ = ΔEng − Δn-Eng (MWork's English).")
    formats: list[Literal["json", "markdown", "png"]] = Field(default_factory=lambda: ["json", "markdown", "png"],
                                                               description="png: every figure as PNG, PDF and SVG")
    layer_axis: Literal["auto", "linear", "log"] = Field(
        "auto", description="y axis of the neurons-per-layer figures; auto: log when one layer holds over 20× the median layer")
    figure_style: Literal["single", "double"] = Field(
        "double", description="Figures drawn at their print width, fonts at least 7 pt there: single: one column "
                              "(3.3 in), double: the text width (6.9 in).")


class Study(Strict):
    """A whole study: model(s), languages, corpora, detection, neuron sets, partitions, arms, evaluations."""

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX, description="Study name; its runs and report carry it.")
    description: str = Field("", description="Free text for readers of the study; no computation reads it.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model to study (default: the embedded Gemma 3 270M).")
    models: dict[ModelName, ModelSpec] = Field(
        default_factory=dict,
        description="Several models (sizes, checkpoints, revisions) by name, instead of `model`: every method runs "
                    "per model and the report compares them side by side (LRDS, SADS, SKLR, set sizes, perplexity).",
    )
    languages: Languages = Field(min_length=1, description="The study's languages, unique ISO 639-1 codes (en, zh, fr, hi, ...).")
    corpora: dict[Key, CorpusSpec] = Field(
        default_factory=dict, description="Text sources by name; detectors, evaluations and enhance arms name the one they read.")
    detect: DetectSpec = Field(default_factory=DetectSpec, description="Detection methods to run.")
    analyses: AnalysesSpec = Field(default_factory=AnalysesSpec, description="Analyses that select no neurons (the logit lens).")
    neurons: dict[Key, str | NeuronsFile] = Field(
        default_factory=dict,
        description="Named neuron sets by set algebra over detectors and other sets, e.g. 'plnd[lang] - plnd[others]', "
                    "or read from a file: {file: PATH}.",
    )
    partitions: dict[Key, LayerRange] = Field(
        default_factory=dict, description="Layer ranges [start, end) by name, e.g. understanding: [0, 4]."
    )
    arms: list[ArmSpec] = Field(default_factory=list, description="Interventions: each deactivates or enhances a selection of neurons.")
    evaluate: dict[Key, Evaluation] = Field(
        default_factory=dict, description="Evaluations by name, each run on the untouched model and on every arm it names.")
    report: ReportSpec = Field(default_factory=ReportSpec, description="How the report is rendered.")
    seed: int = Field(0, ge=0, description="Seed of corpus splits and samples, random controls, enhancement and bootstrap resamples.")

    @model_serializer(mode="wrap")
    def _omit_unused_model(self, handler: Any) -> Any:
        # A multi-model study's dump must validate again: leave out the default `model` it does not use.
        data = handler(self)
        if self.models and isinstance(data, dict):
            data.pop("model", None)
        return data

    def arm(self, name: str) -> ArmSpec | None:
        return next((a for a in self.arms if a.name == name), None)

    def variants(self) -> dict[str | None, "Study"]:
        """One single-model study per entry of `models` (named STUDY@MODEL), or `{None: self}`.

        Each variant compiles and caches like any one-model study, so its stages are keyed by
        its own model's identity; stages that do not touch the model (corpora) are shared.
        """
        if not self.models:
            return {None: self}
        if "model" in self.model_fields_set:
            raise ValueError("give either `model` or `models`, not both")
        return {name: self.model_copy(update={"name": f"{self.name}@{name}", "model": spec, "models": {}})
                for name, spec in self.models.items()}
