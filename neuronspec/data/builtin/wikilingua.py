"""builtin:wikilingua — WikiHow articles in 18 languages (BIG-bench `gem/wikilingua_multilingual`).

152 test articles per language, each with an *English* reference summary (the GEM task is
cross-lingual summarisation into English). The article is the document; the summary is kept
as `meta["reference"]` (with `reference_lang: "en"`) for generation tasks, and
`meta["prompt"]` is the BIG-bench prompt, rebuilt on read.

Languages hold different article sets, but the same WikiHow article appears in several
languages with the same English summary. The item id is a hash of that summary, so such
an article has one id everywhere and falls in the same detect/eval split in every language:
nothing detected on an article's French version is evaluated on its Spanish one.
Licence of the text: WikiHow, CC BY-NC-SA 3.0 (via WikiLingua / GEM).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from neuronspec.data.builtin import Builtin
from neuronspec.data.builtin._bigbench import PACKAGE, read_tasks
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive
from neuronspec.data.text import normalise

TASK = "gem/wikilingua_multilingual"
LANGUAGES = ("ar", "cs", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "nl", "pt", "ru", "th", "tr", "vi", "zh")
MIN_CHARS = 50  # a handful of articles are empty or a single heading
# WikiHow image metadata left inline: {"smallUrl":"https:\/\/www.wikihow.com\/images…","licensing":"<div …>"}
_IMAGE_JSON = re.compile(r'\{\s*"smallUrl"(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
_COMMENT = re.compile(r"^wiki_lingua_[a-z]+_([a-z]{2})-[a-z]+-(\d+)$")


def item_id(summary: str) -> str:
    return "wl-" + hashlib.sha256(summary.strip().encode("utf-8")).hexdigest()[:12]


def extract(archive: Archive) -> dict[str, list[Document]]:
    task = read_tasks(archive, [TASK])[TASK]
    docs: dict[str, list[Document]] = {lang: [] for lang in LANGUAGES}
    for example in task["examples"]:
        match = _COMMENT.match(example.get("comment", ""))
        if match is None:
            raise ValueError(f"unexpected example comment {example.get('comment')!r}")
        lang = match.group(1)
        text = normalise(_IMAGE_JSON.sub(" ", example["input"]))
        summary = normalise(example["target"])
        if len(text) < MIN_CHARS or not summary:
            continue
        meta = {"reference": summary, "reference_lang": "en", "source_id": example["comment"]}
        docs.setdefault(lang, []).append(Document(item_id(summary), lang, text, meta))
    return docs


def expand(doc: Document) -> Document:
    """Add the BIG-bench prompt (`summarize: …` / `summary in English:`), not stored to save space."""
    prompt = f"summarize: {doc.text}\nsummary in English:"
    return dataclasses.replace(doc, meta={**doc.meta, "prompt": prompt})


BUILTIN = Builtin(
    name="wikilingua",
    kind="monolingual",
    aligned=False,
    package=PACKAGE,
    licence="Text: WikiHow, CC BY-NC-SA 3.0 (WikiLingua via GEM/BIG-bench); bigbench package: Apache-2.0.",
    description="WikiHow how-to articles, ~150 per language; meta: English reference summary and prompt.",
    languages=LANGUAGES,
    cleaning=f"Inline WikiHow image metadata (JSON with smallUrl/bigUrl) removed; NFC, whitespace collapsed; articles shorter than {MIN_CHARS} characters dropped.",
    builder=1,
    extract=extract,
    expand=expand,
    extra={"task": TASK},
)
