"""builtin:wiki — Wikipedia articles in 9 languages (BIG-bench `paragraph_segmentation`).

The task holds 9,000 Wikipedia articles, one sentence per line with a label per sentence
that marks paragraph ends: 1,000 articles per language in blocks, in the order
de, en, es, fr, it, nl, pl, pt, ru. The article is rebuilt with its paragraphs
(sentences joined by spaces, paragraphs by a blank line). Monolingual; ids `de-0042`.
Licence of the text: Wikipedia, CC BY-SA.
"""

from __future__ import annotations

import re

from neuronspec.data.builtin import Builtin
from neuronspec.data.builtin._bigbench import PACKAGE, read_tasks
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive
from neuronspec.data.text import normalise

TASK = "paragraph_segmentation"
BLOCKS = ("de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru")
PER_LANGUAGE = 1000
MIN_CHARS = 50
# Words frequent in one block's language and rare in the others: a cheap check that the block order holds.
_MARKERS = {"de": " und ", "en": " the ", "es": " los ", "fr": " les ", "it": " della ", "nl": " het ",
            "pl": " się ", "pt": " não ", "ru": " и "}


# Wiki markup that survived the dump: references (dropped with their content) and formatting tags
# (dropped, content kept: "L<nowiki>'</nowiki>Istituto" -> "L'Istituto").
_REFS = re.compile(r"<ref(?:\s[^<>]*)?/>|<ref(?:\s[^<>]*)?>(?:(?!</?ref[\s>])[\s\S]){0,3000}?</ref>", re.IGNORECASE)
_TAGS = re.compile(
    r"</?(?:nowiki|br|small|big|sup|sub|span|div|center|poem|blockquote|references|onlyinclude|includeonly|noinclude|"
    r"gallery|code|tt|s|u|i|b|abbr|font|p|hr|ol|ul|li|table|tr|td|th|timeline|score|syntaxhighlight|source|math|chem|"
    r"ce|mapframe|section|templatestyles)"
    r"(?:\s+[\w-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>]+))*\s*/?>",  # attributes only as name=value: "a<b and c>d" stays
    re.IGNORECASE,
)


def strip_markup(text: str) -> str:
    return _TAGS.sub("", _REFS.sub("", text)) if "<" in text else text


def rebuild(sentences: list[str], labels: list[str]) -> str:
    """Sentences → paragraphs: a label `1` ends a paragraph (the last sentence always does)."""
    paragraphs, current = [], []
    for i, sentence in enumerate(sentences):
        if sentence.strip():
            current.append(sentence.strip())
        if i < len(labels) and labels[i] == "1" and current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return normalise(strip_markup("\n\n".join(paragraphs)), keep_paragraphs=True)


def extract(archive: Archive) -> dict[str, list[Document]]:
    examples = read_tasks(archive, [TASK])[TASK]["examples"]
    if len(examples) != PER_LANGUAGE * len(BLOCKS):
        raise ValueError(f"{TASK}: expected {PER_LANGUAGE * len(BLOCKS)} examples, found {len(examples)}")
    docs: dict[str, list[Document]] = {}
    for b, lang in enumerate(BLOCKS):
        block = examples[b * PER_LANGUAGE : (b + 1) * PER_LANGUAGE]
        sample = " ".join(e["input"].lower() for e in block[:50])
        best = max(_MARKERS, key=lambda m: sample.count(_MARKERS[m]))
        if best != lang:
            raise ValueError(f"{TASK}: block {b} looks like {best!r}, expected {lang!r}")
        out = []
        for k, example in enumerate(block):
            text = rebuild(example["input"].split("\n"), example["target"].split())
            if len(text) >= MIN_CHARS:
                out.append(Document(f"{lang}-{k:04d}", lang, text, {}))
        docs[lang] = out
    return docs


BUILTIN = Builtin(
    name="wiki",
    kind="monolingual",
    aligned=False,
    package=PACKAGE,
    licence="Text: Wikipedia, CC BY-SA 3.0/4.0 (via BIG-bench paragraph_segmentation); bigbench package: Apache-2.0.",
    description="Wikipedia articles, ~1,000 per language, with paragraph breaks.",
    languages=BLOCKS,
    cleaning=(
        f"Wiki markup removed (<ref> with content; formatting tags such as <nowiki>, <br>, <small> kept their text); "
        f"paragraphs rebuilt from the sentence labels (sentences joined by a space, paragraphs by a blank line), NFC, "
        f"whitespace collapsed within paragraphs; articles shorter than {MIN_CHARS} characters dropped."
    ),
    builder=1,
    extract=extract,
    extra={"task": TASK},
)
