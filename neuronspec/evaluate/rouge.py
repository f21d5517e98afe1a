"""ROUGE-L F1 with a tokenisation that works for every script.

`rouge_score`'s default tokenizer keeps only [a-z0-9], so Chinese, Arabic or Hindi text
scores 0 against anything. Here: scripts written without spaces (Han, kana, Thai, Lao,
Khmer, Myanmar) give one token per character; all others give words, split at whitespace
and punctuation. Combining marks (Devanagari vowel signs, Thai tone marks, Arabic
harakat) stay attached to the character before them, so a Hindi word is not cut apart at
its matras, which `\\w+` regexes do.
"""

from __future__ import annotations

import unicodedata

# Unicode blocks of scripts that do not separate words with spaces.
_CHARACTER_SCRIPTS: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3005, 0x3007),  # ideographic iteration / closing marks, number zero
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def _is_character_script(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CHARACTER_SCRIPTS)


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of `text`: characters for unspaced scripts, words otherwise."""
    tokens: list[str] = []
    word = ""  # the word being built, "" between words
    glued = False  # whether a combining mark may extend the last emitted token
    for ch in unicodedata.normalize("NFC", text).lower():
        category = unicodedata.category(ch)
        if category[0] == "M" and (word or glued):
            if word:
                word += ch
            else:
                tokens[-1] += ch
        elif _is_character_script(ch) and category[0] in "LN":
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
            glued = True
        elif category[0] in "LN" or ch in "_":
            word += ch
            glued = False
        else:  # whitespace, punctuation, symbols separate tokens
            if word:
                tokens.append(word)
                word = ""
            glued = False
    if word:
        tokens.append(word)
    return tokens


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of `candidate` against `reference` (0.0 when either has no tokens)."""
    cand, ref = tokenize(candidate), tokenize(reference)
    if not cand or not ref:
        return 0.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


class RougeTokenizer:
    """Adapter so `rouge_score.rouge_scorer.RougeScorer(tokenizer=RougeTokenizer())` uses
    the same tokenisation (kept for users who want rouge_score's other variants)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)
