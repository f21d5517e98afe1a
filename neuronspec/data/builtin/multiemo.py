"""builtin:multiemo — 4-way review sentiment in 11 languages (BIG-bench `multiemo`).

MultiEmo (Kocoń et al., 2021; CC BY 4.0) is Polish online reviews (hotels, medicine,
products, university) with sentiment labels, machine-translated into ten languages. We use
the whole-review tasks `multiemo/all_text_<lang>`: 8,215 reviews in the same order in every
language, so item k is one review across languages (`me-00042`), with the same label.

One wrinkle: the Polish original has one review more (index 6428) that was not translated.
It is dropped so the Polish items line up; the labels of all items are checked to agree.
The Polish text is tokenised (`była m`, ` , `) and is detokenised here.
`meta`: `label` (stored), `choices` and `prompt` (rebuilt on read: continuation = choice).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from neuronspec.data.builtin import Builtin
from neuronspec.data.builtin._bigbench import PACKAGE, read_tasks
from neuronspec.data.document import Document
from neuronspec.data.packages import Archive
from neuronspec.data.text import normalise

LANGUAGES = ("en", "zh", "fr", "es", "pt", "de", "ru", "ja", "it", "nl", "pl")
CHOICES = ("positive", "negative", "neutral", "ambivalent")
INSTRUCTION = "Determine whether given opinion is positive, negative, neutral or ambivalent in terms of its sentiment."
# Items of the Polish original that have no translation (index in all_text_pl).
UNTRANSLATED = {"pl": (6428,)}

MIN_CHARS = 3  # a few reviews are a stray letter ("P"); dropped in every language, so items stay aligned
_L_FORM = r"(\w+(?:ł|ła|ło|li|ły))"


def detokenise_polish(text: str) -> str:
    """Undo the Polish corpus' tokenisation: `była m` → `byłam`, `był em` → `byłem`, `chciała by m` → `chciałabym`,
    ` , ` → `, `."""
    text = re.sub(_L_FORM + r" by (m|ś|śmy|ście)\b", r"\1by\2", text)
    text = re.sub(_L_FORM + r" by\b", r"\1by", text)
    text = re.sub(r"(\w+(?:ł|ła|ło|li|ły|na|ny)) (m|ś|śmy|ście)\b", r"\1\2", text)
    text = re.sub(r"(\w+(?:ł|ien)) (em|eś|eśmy|eście)\b", r"\1\2", text)  # "był em" → "byłem", "powinien em"
    text = re.sub(r"(\w+ni) (śmy|ście)\b", r"\1\2", text)  # "powinni śmy" → "powinniśmy"
    text = re.sub(r"\b((?i:żeby|gdyby|jakby|aby|choćby|czyżby)) (m|ś|śmy|ście)\b", r"\1\2", text)  # "gdyby m"
    text = re.sub(r"\b([bB]y) (m|ś|śmy|ście)\b", r"\1\2", text)  # what is left: "to by m" → "to bym"
    text = re.sub(r"\s+([.,!?;:%)\]”])", r"\1", text)
    text = re.sub(r"([(\[„])\s+", r"\1", text)
    return text


def _label(example: dict[str, Any]) -> int:
    scores: dict[str, int] = example["target_scores"]
    best = max(scores, key=lambda k: scores[k])
    return CHOICES.index(best)


def extract(archive: Archive) -> dict[str, list[Document]]:
    tasks = read_tasks(archive, [f"multiemo/all_text_{lang}" for lang in LANGUAGES])
    reference = [_label(e) for e in tasks["multiemo/all_text_en"]["examples"]]
    docs: dict[str, list[Document]] = {}
    for lang in LANGUAGES:
        skip = set(UNTRANSLATED.get(lang, ()))
        examples = [e for i, e in enumerate(tasks[f"multiemo/all_text_{lang}"]["examples"]) if i not in skip]
        labels = [_label(e) for e in examples]
        if labels != reference:
            raise ValueError(f"multiemo/all_text_{lang}: items do not line up with English (labels differ)")
        out = []
        for k, example in enumerate(examples):
            text = normalise(example["input"])
            if lang == "pl":
                text = detokenise_polish(text)
            if len(text) >= MIN_CHARS:
                out.append(Document(f"me-{k:05d}", lang, text, {"label": labels[k]}))
        docs[lang] = out
    return docs


def expand(doc: Document) -> Document:
    """Add `choices` and the BIG-bench style `prompt`; score `prompt + choice`."""
    prompt = f"{INSTRUCTION}\nQ: {doc.text}\nA: "
    return dataclasses.replace(doc, meta={**doc.meta, "choices": list(CHOICES), "prompt": prompt})


BUILTIN = Builtin(
    name="multiemo",
    kind="task",
    aligned=True,
    package=PACKAGE,
    licence="MultiEmo (Kocoń et al. 2021): CC BY 4.0; translations machine-made; bigbench package: Apache-2.0.",
    description="Review sentiment (positive/negative/neutral/ambivalent), the same 8,215 reviews in 11 languages.",
    languages=LANGUAGES,
    cleaning=(
        "NFC, whitespace collapsed; Polish detokenised (clitics and punctuation re-attached); the one untranslated "
        "Polish review (all_text_pl index 6428) dropped so items align; labels verified equal across languages; texts shorter than 3 characters dropped."
    ),
    builder=1,
    extract=extract,
    expand=expand,
    extra={"choices": list(CHOICES), "instruction": INSTRUCTION},
)
