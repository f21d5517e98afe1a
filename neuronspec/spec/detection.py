"""The `detect:` and `analyses:` sections of a study: PLND, LAPE, Lingua Franca, Sharing Matters
(with its attribution) and the logit lens."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from neuronspec.spec.fields import Batching, Quantile, Site, Strict, Threshold, TopK, _unique, expand_sites


class StabilitySpec(Strict):
    """Split-half stability of PLND's sets: each language's documents split in two by a seeded permutation."""

    halves: bool = Field(True, description="Detect on each half as on all documents (its own ε) and report each set's "
                                           "Jaccard overlap between the halves, per language. Costs no extra forward "
                                           "pass: the halves' statistics are folded in the same pass (2× the memory "
                                           "of the statistics).")
    seed: int | None = Field(None, ge=0, description="Seed of the split (default: the study seed).")


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
    stability: StabilitySpec = Field(
        default_factory=StabilitySpec,
        description="Split-half stability of the sets plnd[lang] and of the named sets built from them alone (on by default).")

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


#: Sharing Matters' events → the pooled activation matrix (methods.activations.POOLINGS) whose value must exceed τ
SHARING_EVENTS: dict[str, str] = {"reference": "act_last", "gate": "act_mean", "magnitude": "mean_abs", "signed_mean": "mean"}
SharingEvent = Literal["reference", "gate", "magnitude", "signed_mean"]


class SharingSpec(Batching):
    """Sharing Matters (Wang et al. 2024): per parallel item, is a neuron active in all, some, one or no languages."""

    corpus: str = Field(description="A parallel corpus (same items in every language).")
    event: SharingEvent = Field(
        "reference", description="What counts as activated in an item: reference = the MLP nonlinearity's output "
                                 "act(gate·x) at the item's last token > τ (the paper's notebooks); gate = its token mean "
                                 "> τ; magnitude = the token mean of |neuron| > τ (needs τ > 0); signed_mean = the token "
                                 "mean of the signed neuron act(gate·x)·(up·x) > τ (the earlier default).")
    thresholds: Annotated[list[float], AfterValidator(_unique)] = Field(
        default_factory=lambda: [0.0], min_length=1, json_schema_extra={"uniqueItems": True}, description="Activation thresholds τ to sweep.")
    set_threshold: float | None = Field(
        None, description="τ for the sets `sharing` (specific) and `sharing.all_shared`: one of `thresholds` (default: the first).")
    min_fraction: float = Field(0.5, gt=0, le=1, description="A neuron is in a set when its category holds for at least this share of items.")
    attribution: AttributionSpec | None = Field(
        None, description="Attribute the output to the neurons of each category at the set τ (stages attr/sharing/LANG): "
                          "share of |attribution| per category, overall and per layer.")

    @field_validator("set_threshold")
    @classmethod
    def _set_threshold_swept(cls, value: float | None, info: ValidationInfo) -> float | None:
        # the report shows the category shares at the set τ, and only swept τs have them
        swept = info.data.get("thresholds")
        if value is not None and swept is not None and value not in swept:
            raise ValueError(f"{value} is not one of thresholds {swept}")
        return value


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
