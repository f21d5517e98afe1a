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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from neuronspec.data.languages import LANGUAGES

#: Names of studies, arms and models: safe in file names, stage ids and run ids.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX = 64
#: Bootstrap resamples are held in memory per cell: 1e9 died with MemoryError at run time.
MAX_BOOTSTRAP = 100_000
ModelName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]
#: Names of neuron sets, evaluations, corpora and partitions. They become file names
#: (`{set}.{lang}.safetensors`, `{evaluation}-….png`), so no separators and no dots: a dot
#: would let a set `fam.en` collide with language `en` of a family set `fam`.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=NAME_MAX)]

SITES = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")
Site = Literal["ffn", "attn.q", "attn.k", "attn.v", "attn.o"]
#: `attn` and `all` are shorthands accepted wherever a list of sites is.
SITE_GROUPS: dict[str, tuple[str, ...]] = {"attn": SITES[1:], "all": SITES}


class Strict(BaseModel):
    # inf and NaN are never a meaningful setting (`lr: .inf` used to give "+nan" cells and exit 0)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_language(code: str) -> str:
    if code not in LANGUAGES:
        raise ValueError(f"unknown language code {code!r}; use an ISO 639-1 code such as en, zh, fr, hi")
    return code


LanguageCode = Annotated[str, AfterValidator(_check_language)]


def _check_range(value: tuple[int, int]) -> tuple[int, int]:
    start, end = value
    if start < 0 or end <= start:
        raise ValueError(f"layer range [{start}, {end}] must satisfy 0 <= start < end")
    return value


LayerRange = Annotated[tuple[int, int], AfterValidator(_check_range)]


def expand_sites(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for site in SITE_GROUPS.get(name, (name,)):
            if site not in out:
                out.append(site)
    return out


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
    languages: list[LanguageCode] | None = Field(None, description="Subset of the study's languages (default: all).")
    options: dict[str, Any] = Field(default_factory=dict, description="Source-specific options (text_field, config, ...).")


class Quantile(Strict):
    quantile: float = Field(gt=0, lt=1, description="ε is this quantile of the per-neuron minima over documents (min over c of Imp), pooled over "
                                                      "languages, layers and neurons of a site.")


# ε = .inf is meaningful (select nothing: the empty-set path); NaN still fails `ge=0`.
Threshold = Annotated[Union[Annotated[float, Field(ge=0, allow_inf_nan=True)], Quantile], Field(union_mode="left_to_right")]


#: a per-layer top-k: a count (an integer ≥ 1) or a fraction of the layer's width (a float in (0, 1))
TopK = Annotated[Union[Annotated[int, Field(ge=1, strict=True)], Annotated[float, Field(gt=0, lt=1)]],
                 Field(union_mode="left_to_right")]


class Batching(Strict):
    """How documents are grouped into forward passes (length-sorted, so padding stays small)."""

    batch_size: int = Field(8, gt=0, description="Documents per forward pass (at most).")
    batch_tokens: int | None = Field(
        None, gt=0, description="Token budget per forward pass, padding included (documents × longest ≤ budget): "
                                "long documents go in small batches, short ones in large.")

    def batching(self) -> dict[str, int]:
        """For a stage's spec: batch_tokens only when set, so studies without it keep their cache keys."""
        return {"batch_size": self.batch_size, **({"batch_tokens": self.batch_tokens} if self.batch_tokens else {})}


class PLNDSpec(Batching):
    """Parallel Language-specific Neuron Detection (Zhao et al. 2024)."""

    corpus: str = Field("detect", description="Name of a corpus in `corpora`.")
    sites: list[Literal["ffn", "attn.q", "attn.k", "attn.v", "attn.o", "attn", "all"]] = Field(
        default_factory=lambda: ["ffn"], min_length=1,
        description="Sites to score: ffn, attn.q, attn.k, attn.v, attn.o; attn = the four attention sites, all = all five.")
    epsilon: Threshold | dict[Site, Threshold] = Field(
        default_factory=lambda: Quantile(quantile=0.99),
        description="Importance threshold ε, absolute (≥ 0) or {quantile: q}; one for all sites or one per site.",
    )
    rule: Literal["all_docs", "topk_intersect"] = Field(
        "all_docs",
        description="all_docs: Imp ≥ ε for every document (the paper). topk_intersect: among the k most important "
                    "neurons of its layer for every document (the reference code; k per site in `top_k`).",
    )
    top_k: dict[Site, TopK] = Field(
        # the reference's README values (2000 ffn, 1000 attention neurons per layer) as fractions of 7B widths
        default_factory=lambda: {"ffn": 0.14, "attn.q": 0.25, "attn.k": 0.25, "attn.v": 0.25, "attn.o": 0.25},
        description="Per site, the per-layer top k of rule topk_intersect: a count (integer ≥ 1) or a fraction of "
                    "the layer's width (float in (0, 1); 0.14 ≈ the reference's 2000 of 14,336 ffn neurons).")
    token_reduce: Literal["mean", "sum"] = Field(
        "mean", description="How a document's per-token importances combine: mean keeps ε comparable across document lengths."
    )

    def site_list(self) -> list[str]:
        return expand_sites(list(self.sites))

    def threshold(self, site: str) -> float | Quantile | None:
        if isinstance(self.epsilon, dict):
            return self.epsilon.get(site)  # type: ignore[call-overload]
        return self.epsilon


class LapeSpec(Batching):
    """LAPE (Tang et al. 2024): language-specific neurons by low entropy of activation probability."""

    corpus: str = Field("detect", description="Name of a corpus in `corpora`.")
    top_rate: float = Field(0.01, gt=0, le=1, description="Keep this share of neurons with the lowest entropy.")
    filter_quantile: float = Field(0.95, gt=0, lt=1, description="Drop neurons whose largest probability is below this quantile of all p.")
    assign_quantile: float = Field(0.95, gt=0, lt=1, description="Assign a kept neuron to languages whose p exceeds this quantile.")
    event: Literal["gate", "neuron"] = Field("gate", description="gate: act(gate·x) > 0 (the paper's code); neuron: the ffn neuron > 0.")


class LinguaFrancaSpec(Batching):
    """Key linguistic regions (Zeng et al. 2024) from a parallel corpus: neurons whose
    contribution to same-language similarity has a z-score across languages above the threshold."""

    corpus: str = Field(description="A parallel corpus (same items in every language), e.g. builtin:bible.")
    z_threshold: float = Field(2.0, gt=0, description="Paper: 2. With n languages the largest possible z-score is √(n−1).")


class AttributionSpec(Strict):
    """How much of the model's output each neuron category accounts for: per item and ffn neuron,
    Integrated Gradients of the item's log-probability (or the cheap |activation|·‖W_down[:,k]‖)."""

    method: Literal["ig", "activation_norm"] = Field(
        "ig", description="ig: Integrated Gradients of Σ log p(own tokens) w.r.t. each layer's ffn neurons (baseline: the "
                          "layer zeroed); costs about probes + steps forward (+ steps backward) passes per item and layer, "
                          "each holding batch_size × step_batch sequences. activation_norm: (mean over tokens of |a_k|)·‖W_down[:,k]‖ "
                          "from one forward pass, no gradients (the Sharing Matters notebooks).")
    steps: int = Field(32, ge=2, description="ig: gradient nodes of the quadrature per item and layer (forward + backward "
                                             "passes; time grows linearly). Must be ≥ probes.")
    step_batch: int = Field(8, gt=0, description="ig: α values per forward/backward pass (memory grows linearly, passes shrink).")
    probes: int = Field(17, ge=2, description="ig: forward-only probes of f on a log-spaced α grid that place the adaptive "
                                              "quadrature's nodes (one pass each per item and layer).")
    docs: int = Field(8, gt=0, description="Items per language to attribute (the first ones; the same items in every "
                                           "language). ig costs ~steps forward+backward passes per item and layer: keep it "
                                           "small on CPU.")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="Layers to attribute (default: all); ig time grows linearly with their number.")

    @model_validator(mode="after")
    def _check(self) -> "AttributionSpec":
        if self.method == "ig" and self.probes > self.steps:
            raise ValueError(f"the adaptive quadrature needs steps >= probes, got steps {self.steps} < probes {self.probes}")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("layers must be unique")
        return self


class SharingSpec(Batching):
    """Sharing Matters (Wang et al. 2024): per parallel item, is a neuron active in all, some, one or no languages."""

    corpus: str = Field(description="A parallel corpus (same items in every language).")
    thresholds: list[float] = Field(default_factory=lambda: [0.0], min_length=1, description="Activation thresholds τ to sweep.")
    set_threshold: float | None = Field(None, description="τ for the sets `sharing` (specific) and `sharing.all_shared` (default: the first τ).")
    min_fraction: float = Field(0.5, gt=0, le=1, description="A neuron is in a set when its category holds for at least this share of items.")
    attribution: AttributionSpec | None = Field(
        None, description="Attribute the output to the neurons of each category at the set τ (stages attr/sharing/LANG): "
                          "share of |attribution| per category, overall and per layer.")


class DetectSpec(Strict):
    """Detection methods; each gives one neuron set per language, named after it in set expressions."""

    plnd: PLNDSpec | None = Field(None, description="PLND: neurons whose importance reaches ε for every document of a language (sets plnd[lang]).")
    lape: LapeSpec | None = Field(None, description="LAPE: ffn neurons whose activation probability has low entropy across languages (sets lape[lang]).")
    linguafranca: LinguaFrancaSpec | None = Field(
        None, description="LinguaFranca: similarity maps, LRDS / SADS per layer and key linguistic regions (sets linguafranca[lang]).")
    sharing: SharingSpec | None = Field(
        None, description="Sharing Matters: all-shared / partial / specific / non-activated ffn neurons (sets sharing[lang], sharing.all_shared).")


class LogitLensSpec(Batching):
    """Project each layer's residual stream to the vocabulary and classify the top tokens' language."""

    corpus: str = Field(description="Prompts per language (a corpus name).")
    final_norm: bool = Field(True, description="Apply the final norm before the unembedding (the PLND paper's figure does not).")
    top_k: int = Field(1, gt=0, description="Top tokens per position whose language is counted.")
    positions: Literal["last", "all"] = Field("last", description="last: the last real token of each prompt; all: every counted token.")


class AnalysesSpec(Strict):
    """Analyses that select no neurons."""

    logit_lens: LogitLensSpec | None = Field(None, description="Which language each layer's residual stream decodes to, per prompt language.")


#: random draws of a deactivate arm's `random_like` control: one draw can hit a critical neuron
DEFAULT_DRAWS = 5


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
    seed: int | None = Field(None, ge=0, description="Seed for random_like (default: the study seed).")
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
    """Switch neurons off (activations zeroed by hooks) while evaluating."""


class EnhanceSpec(NeuronSelection):
    """Fine-tune only the selected neurons on documents of each language (MWork's enhancement).

    Defaults are the paper's: lr 2e-6, 1 epoch, effective batch 32, sequence length 512,
    gradient-norm clipping 0.3 (on the selected neurons' gradient), cosine schedule with 5% warm-up.
    """

    corpus: str = Field(description="Training corpus (name in `corpora`); keep it disjoint from evaluation corpora (split: detect).")
    docs: int | None = Field(None, gt=0, description="Training documents per language (the paper sweeps 100 / 200 / 400 / 800).")
    languages: list[LanguageCode] | None = Field(None, description="Languages to enhance, each with its own neurons and documents (default: all).")
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
    on: Literal["self", "all"] = Field(
        "all",
        description="self: evaluate each language's arm only on that language; all: on every language (the language × language matrix).",
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
        None, description="Folder of custom task YAMLs, relative to the study file; their local data files are part of the cache key.")
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
    on: Literal["self", "all"] = Field(
        "all", description="self: evaluate each language's arm only on that language's task; all: on every task (the matrix).")
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
    languages: list[LanguageCode] = Field(min_length=1, description="The study's languages, unique ISO 639-1 codes (en, zh, fr, hi, ...).")
    corpora: dict[Key, CorpusSpec] = Field(
        default_factory=dict, description="Text sources by name; detectors, evaluations and enhance arms name the one they read.")
    detect: DetectSpec = Field(default_factory=DetectSpec, description="Detection methods to run.")
    analyses: AnalysesSpec = Field(default_factory=AnalysesSpec, description="Analyses that select no neurons (the logit lens).")
    neurons: dict[Key, str] = Field(
        default_factory=dict,
        description="Named neuron sets by set algebra over detectors and other sets, e.g. 'plnd[lang] - plnd[others]'.",
    )
    partitions: dict[Key, LayerRange] = Field(
        default_factory=dict, description="Layer ranges [start, end) by name, e.g. understanding: [0, 4]."
    )
    arms: list[ArmSpec] = Field(default_factory=list, description="Interventions: each deactivates or enhances a selection of neurons.")
    evaluate: dict[Key, Evaluation] = Field(
        default_factory=dict, description="Evaluations by name, each run on the untouched model and on every arm it names.")
    report: ReportSpec = Field(default_factory=ReportSpec, description="How the report is rendered.")
    seed: int = Field(0, ge=0, description="Seed of corpus splits and samples, random controls, enhancement and bootstrap resamples.")

    @field_validator("languages")
    @classmethod
    def _unique_languages(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("languages must be unique")
        return value

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

