"""Language fidelity: does the model still answer in the language it was asked in?

Deactivating a language's neurons often makes a model drift into English (or another
language) while staying fluent, which ROUGE alone hides. We identify each output's
language with `lingua-language-detector` (offline), restricted to a candidate set: the
study's languages. Restricting both speeds detection up and keeps the question the
study asks ("zh or one of the other languages we look at?").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

# Used when the caller names no candidate set: languages common in multilingual-neuron
# studies (MWork, LinguaFranca, Sharing Matters) that lingua supports.
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "vi", "zh",
)

_ALIASES = {"no": "nb"}  # lingua has Bokmål and Nynorsk, not a generic Norwegian

_INSTALL_HINT = "language fidelity needs lingua-language-detector: pip install 'neuronspec[generation]'"


def _lingua() -> Any:
    try:
        import lingua
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL_HINT) from err
    return lingua


def canonical(code: str) -> str:
    """The lower-case ISO 639-1 code lingua uses for `code` ("no" -> "nb")."""
    return _ALIASES.get(code.lower(), code.lower())


def _iso(code: str) -> Any:
    lingua = _lingua()
    key = canonical(code).upper()
    iso = getattr(lingua.IsoCode639_1, key, None)
    if iso is None:
        raise ValueError(f"lingua cannot identify language {code!r}; fidelity is unavailable for it")
    return iso


@lru_cache(maxsize=8)
def _detector(codes: frozenset[str]) -> Any:
    lingua = _lingua()
    isos = sorted({_iso(c) for c in codes}, key=lambda iso: iso.name)
    if len(isos) < 2:
        raise ValueError("language fidelity needs at least two candidate languages (else every output matches)")
    return lingua.LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()


def detector(languages: Iterable[str]) -> Any:
    """The lingua detector for this candidate set, built once per set and cached."""
    return _detector(frozenset(canonical(c) for c in languages))


def candidates(lang: str, languages: Iterable[str] | None) -> frozenset[str]:
    """The candidate set: `languages` (or the defaults) plus `lang` itself."""
    chosen = DEFAULT_CANDIDATES if languages is None else tuple(languages)
    return frozenset(canonical(c) for c in (*chosen, lang))


def detect(texts: Sequence[str], languages: Iterable[str]) -> list[str | None]:
    """ISO 639-1 code detected for each text (lower case), None when undecidable/empty."""
    found = detector(languages)
    codes: list[str | None] = []
    for text in texts:
        result = found.detect_language_of(text) if text.strip() else None
        codes.append(None if result is None else result.iso_code_639_1.name.lower())
    return codes


def fidelity(texts: Sequence[str], lang: str, languages: Iterable[str] | None = None) -> float:
    """Share of `texts` identified as `lang`; empty or undecidable outputs count as not
    faithful. `languages` is the candidate set (default: `DEFAULT_CANDIDATES`)."""
    if not texts:
        raise ValueError("fidelity of no texts is undefined")
    target = canonical(lang)
    found = detect(texts, candidates(lang, languages))
    return sum(code == target for code in found) / len(texts)
