"""Logit lens: which language does each layer's residual stream "think" in?

For each decoder layer i, the residual stream after that layer h_i (at the last real token
of each prompt, or at every counted token) is projected to the vocabulary — through the
final norm when ``final_norm=True`` (the usual logit lens; for the last layer this is the
model's own prediction) or without it (as in the PLND paper's figure) — and the top-k
tokens are classified by language. The unembedding runs in vocabulary chunks with a
running top-k, so a 262k vocabulary never materialises more than ``chunk_elements``
logits. Softcapping / logit scaling are monotonic and do not change the top-k.

Token language (:class:`TokenClassifier`), relative to a *universe* of languages (the
study's, plus English):

1. the dominant Unicode script of the token's letters (any kana ⇒ Japanese);
   no letters (punctuation, digits, byte pieces, special tokens) ⇒ ``none``;
2. the universe's languages written in that script (``LANGUAGES[code].script``; Japanese
   also in kana); if none, every known language of that script;
3. one candidate ⇒ that language; several ⇒ lingua-language-detector restricted to them
   when the token has at least ``min_chars`` letters (1 for Han), else
   ``"<script>/unknown"`` (e.g. ``latin/unknown``); no known language ⇒ ``"<script>/unknown"``.

Per prompt language P the lens reports, per layer, the share of top-k tokens that are
``english``, ``prompt`` (P; for English prompts the same tokens as ``english``),
``other`` (another language), ``ambiguous`` (script known, language not) and
``non_linguistic``; english (or prompt) + other + ambiguous + non_linguistic = 1.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from neuronspec.data.languages import LANGUAGES
from neuronspec.methods.plnd import token_weights
from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.onednn import linear
from neuronspec.models.sites import adapter_for

CATEGORIES: tuple[str, ...] = ("english", "prompt", "other", "ambiguous", "non_linguistic")
#: logits per unembedding chunk (64 MB in float32)
CHUNK_ELEMENTS = 1 << 24

# Unicode character-name prefixes that are not the script's own name
_NAME_TO_SCRIPT = {"CJK": "Han", "KANGXI": "Han", "IDEOGRAPHIC": "Han", "HIRAGANA": "Kana", "KATAKANA": "Kana",
                   "HALFWIDTH": "Kana", "HANGUL": "Hangul"}
_NOT_A_SCRIPT = {"COMBINING", "MODIFIER", "SCRIPT", "DOUBLE-STRUCK", "BLACK-LETTER", "PARENTHESIZED", "CIRCLED",
                 "MATHEMATICAL", "SQUARED", "NEGATIVE", "TURNED", "REVERSED"}


def char_script(ch: str) -> str | None:
    """Script family of a letter or mark from its Unicode name ("Latin", "Han", "Kana", ...); None
    for anything else (digits, punctuation, generic combining accents, symbols)."""
    if unicodedata.category(ch)[0] not in "LM":
        return None
    words = unicodedata.name(ch, "").split()
    if not words or words[0] in _NOT_A_SCRIPT:
        return None
    return _NAME_TO_SCRIPT.get(words[0], words[0].title())


def token_script(text: str) -> tuple[str | None, int]:
    """(dominant script, number of letters in it) of a token's text (NFKC-normalised first, so
    fullwidth and compatibility forms count as their base script); any kana makes it "Kana"."""
    counts: dict[str, int] = {}
    for ch in unicodedata.normalize("NFKC", text):
        s = char_script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None, 0
    if "Kana" in counts:
        return "Kana", counts["Kana"] + counts.get("Han", 0)
    script = max(sorted(counts), key=lambda s: counts[s])
    return script, counts[script]


def _scripts_of(code: str) -> set[str]:
    scripts = {LANGUAGES[code].script}
    if code == "ja":
        scripts.add("Kana")
    return scripts


class TokenClassifier:
    """Language label of token ids, cached per id: a language code, "<script>/unknown" or "none"."""

    def __init__(self, tokenizer: Any, universe: Iterable[str], *, min_chars: int = 3, use_lingua: bool = True) -> None:
        self.tokenizer = tokenizer
        self.universe = sorted(set(universe) | {"en"})
        for code in self.universe:
            if code not in LANGUAGES:
                raise KeyError(f"unknown language code {code!r}")
        self.min_chars, self.use_lingua = min_chars, use_lingua
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, str] = {}
        self._detectors: dict[tuple[str, ...], Any] = {}

    def candidates(self, script: str) -> list[str]:
        inside = [c for c in self.universe if script in _scripts_of(c)]
        return inside or sorted(c for c in LANGUAGES if script in _scripts_of(c))

    def classify_text(self, text: str) -> str:
        script, letters = token_script(text)
        if script is None:
            return "none"
        cands = self.candidates(script)
        if len(cands) == 1:
            return cands[0]
        need = 1 if script == "Han" else self.min_chars
        if cands and self.use_lingua and letters >= need:
            found = self._detect(text.strip(), tuple(cands))
            if found:
                return found
        return f"{script.lower()}/unknown"

    def _detect(self, text: str, cands: tuple[str, ...]) -> str | None:
        try:
            from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
        except ImportError:  # the optional "generation" extra; without it ties stay "<script>/unknown"
            self.use_lingua = False
            return None
        if cands not in self._detectors:
            langs = []
            for c in cands:
                try:
                    langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())))
                except (AttributeError, ValueError):
                    continue
            self._detectors[cands] = LanguageDetectorBuilder.from_languages(*langs).build() if len(langs) >= 2 else None
        detector = self._detectors[cands]
        if detector is None:
            return None
        found = detector.detect_language_of(text)
        code = found.iso_code_639_1.name.lower() if found is not None else None
        return code if code in cands else None

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self._cache:
            if token_id in self.special:
                self._cache[token_id] = "none"
            else:
                self._cache[token_id] = self.classify_text(self.tokenizer.decode([token_id]))
        return self._cache[token_id]


def category(label: str, prompt_language: str) -> list[str]:
    """The categories a token label counts in for prompts in `prompt_language`."""
    if label == "none":
        return ["non_linguistic"]
    if label.endswith("/unknown"):
        return ["ambiguous"]
    out = []
    if label == "en":
        out.append("english")
    if label == prompt_language:
        out.append("prompt")
    return out or ["other"]


# ---- projection ---------------------------------------------------------------------


def lens_topk(model: nn.Module, states: Tensor, k: int, *, final_norm: bool = True,
              chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Top-k token ids [N, k] (best first) of states [N, hidden] projected through the (final
    norm and the) unembedding, vocabulary chunk by chunk."""
    adapter = adapter_for(model.config)  # no per-call shape check: this runs once per layer and batch
    unembed = adapter.unembed(model)
    weight, bias = unembed.weight, getattr(unembed, "bias", None)
    x = adapter.final_norm(model)(states) if final_norm else states
    x = x.to(weight.dtype)
    n, vocab = x.shape[0], weight.shape[0]
    k = min(k, vocab)
    chunk = max(k, chunk_elements // max(n, 1))
    best_v = torch.full((n, 0), float("-inf"), device=x.device)
    best_i = torch.zeros((n, 0), dtype=torch.int64, device=x.device)
    for v0 in range(0, vocab, chunk):
        v1 = min(vocab, v0 + chunk)
        logits = linear(x, weight[v0:v1], None if bias is None else bias[v0:v1]).float()
        top = logits.topk(min(k, v1 - v0), dim=-1)
        vals = torch.cat([best_v, top.values], dim=1)
        idx = torch.cat([best_i, top.indices + v0], dim=1)
        keep = vals.topk(min(k, vals.shape[1]), dim=-1)
        best_v, best_i = keep.values, idx.gather(1, keep.indices)
    return best_i


# ---- results ----------------------------------------------------------------------


@dataclass
class LensCounts:
    """Per-layer counts of top-k tokens by category for prompts in one language."""

    language: str
    layers: list[int]
    final_norm: bool
    top_k: int
    positions: str
    counts: dict[str, list[int]] = field(default_factory=dict)  # category -> per layer
    totals: list[int] = field(default_factory=list)  # top-k tokens classified per layer
    labels: dict[str, list[int]] = field(default_factory=dict)  # raw label -> per layer

    def ratios(self) -> dict[str, list[float]]:
        return {c: [v / t if t else 0.0 for v, t in zip(vals, self.totals)] for c, vals in self.counts.items()}

    def to_json(self) -> dict[str, Any]:
        return {"language": self.language, "layers": self.layers, "final_norm": self.final_norm, "top_k": self.top_k,
                "positions": self.positions, "counts": self.counts, "totals": self.totals, "ratios": self.ratios(),
                "labels": self.labels}


class _Tally:
    def __init__(self, language: str, layers: list[int], final_norm: bool, top_k: int, positions: str) -> None:
        self.result = LensCounts(language, layers, final_norm, top_k, positions,
                                 {c: [0] * len(layers) for c in CATEGORIES}, [0] * len(layers), {})

    def add(self, slot: int, ids: Tensor, classify: TokenClassifier) -> None:
        r = self.result
        for tid in ids.flatten().tolist():
            label = classify(tid)
            r.labels.setdefault(label, [0] * len(r.layers))[slot] += 1
            for cat in category(label, r.language):
                r.counts[cat][slot] += 1
            r.totals[slot] += 1


def logit_lens(model: nn.Module, batches: Iterable[Batch], language: str, classifier: TokenClassifier, *,
               layers: Sequence[int] | None = None, top_k: int = 1, positions: Literal["last", "all"] = "last",
               final_norm: bool = True, skip_first: bool = True) -> LensCounts:
    """Stream prompts in `language` through the decoder; tally the lens's top-k token languages per layer.

    ``positions="last"``: the last real token of each prompt; ``"all"``: every counted token
    (padding and, with `skip_first`, the first token left out). Memory: one batch's states.
    """
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    layers = list(range(dims.num_layers)) if layers is None else sorted({int(l) for l in layers})
    if not layers or not all(0 <= l < dims.num_layers for l in layers):
        raise ValueError(f"layers must be in [0, {dims.num_layers}), got {layers}")
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    tally = _Tally(language, layers, final_norm, top_k, positions)
    decoder_layers = adapter.layers(model)
    device = next(model.parameters()).device
    seen: dict[int, Tensor] = {}
    select: dict[str, Tensor] = {}

    def hook_for(slot: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            h = output[0] if isinstance(output, tuple) else output
            h = h.detach()
            if positions == "last":
                seen[slot] = h[torch.arange(h.shape[0], device=h.device), select["last"]]
            else:
                seen[slot] = h[select["keep"]]
        return hook

    handles = [decoder_layers[l].register_forward_hook(hook_for(s)) for s, l in enumerate(layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                mask = batch.attention_mask.to(device)
                select["last"] = mask.sum(1) - 1
                select["keep"] = token_weights(mask, skip_first) > 0
                seen.clear()
                hidden_forward(model, batch.input_ids, batch.attention_mask, last_layer=layers[-1])
                for slot in range(len(layers)):
                    tally.add(slot, lens_topk(model, seen[slot], top_k, final_norm=final_norm).cpu(), classifier)
    finally:
        for h in handles:
            h.remove()
    return tally.result
