"""Text normalisation shared by the built-in corpora.

Only what every corpus needs: Unicode NFC, invisible characters removed, whitespace
collapsed. Zero-width (non-)joiners stay: they change how Devanagari, Bengali and Persian
words render and tokenise. Corpus-specific markup is stripped in each builtin module.
"""

from __future__ import annotations

import re
import unicodedata

# Invisible characters that carry no meaning in running text (ZWSP, BOM, soft hyphen, word joiner).
_INVISIBLE = re.compile("[\u200b\ufeff\u00ad\u2060]")
# Every horizontal space (NBSP, thin spaces, ideographic space, tabs) becomes one ASCII space.
_SPACES = re.compile(r"[^\S\n]{2,}|[^\S\n ]")  # runs, or one non-ASCII space: single spaces need no work
_NEWLINES = re.compile(r"\s*\n\s*")
_PARAGRAPHS = re.compile(r"\s*\n\s*\n\s*")

# Han, kana, CJK and full-width punctuation: scripts that do not separate words with spaces.
_CJK = "\u2e80-\u2fff\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}“”‘’])\s+|\s+(?=[{_CJK}“”‘’])")


def normalise(text: str, *, keep_paragraphs: bool = False) -> str:
    """NFC, invisible characters removed, whitespace collapsed and stripped.

    With `keep_paragraphs`, blank-line paragraph breaks survive as one `\\n\\n`; single line
    breaks become spaces. Otherwise the result is one line.
    """
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    if keep_paragraphs:
        paragraphs = _PARAGRAPHS.split(text.strip())
        return "\n\n".join(p for p in (_SPACES.sub(" ", _NEWLINES.sub(" ", p)).strip() for p in paragraphs) if p)
    if "\n" in text:
        text = _NEWLINES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def drop_cjk_spaces(text: str) -> str:
    """Remove spaces next to Han/kana characters and CJK punctuation.

    Some Chinese Bibles put a space after every full-width comma and before 神 (a typographic
    honorific); models never see that in modern text, and it inflates token counts.
    """
    return _CJK_SPACE.sub("", text)


def has_letters(text: str) -> bool:
    """True when `text` contains at least one letter (any script): a floor for real content."""
    return any(unicodedata.category(ch).startswith("L") for ch in text)
