"""Deterministic detect/eval splits and seeded sampling.

Both are functions of *item ids* only, never of positions or of which other documents exist:

- an item is in the eval split when sha256("split", seed, id) falls below `eval_fraction`, so
  a parallel item lands in the same split in every language, neurons are never detected on
  text they are then evaluated on, and adding documents to a corpus never moves old ones.
  The source is not part of it: the same file named by a relative or an absolute path, or
  read through `hf:json`, splits the same way (the item id is the identity);
- a sample of n items is the n ids with the smallest sha256(seed + id). This is a seeded
  shuffle that is identical on every platform and Python version, and the sample of 100 is
  a prefix of the sample of 200 with the same seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from neuronspec.data.document import Document, corpus_error

Split = Literal["detect", "eval", "all"]
SPLITS: tuple[str, ...] = ("detect", "eval", "all")


def _unit(text: str) -> float:
    """sha256 of `text` mapped to [0, 1) (first 8 bytes, big-endian)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def eval_score(seed: int, item_id: str) -> float:
    """Where an item falls in [0, 1); it belongs to eval when the score is below the fraction.
    Salted apart from `shuffled`, so the eval split is not the head of the sample order."""
    return _unit(f"split\x1f{seed}\x1f{item_id}")


def in_eval(seed: int, item_id: str, eval_fraction: float) -> bool:
    return eval_score(seed, item_id) < eval_fraction


def split_ids(seed: int, ids: Iterable[str], split: Split, eval_fraction: float) -> list[str]:
    """The ids of `ids` that belong to `split`, in their given order."""
    if split == "all":
        return list(ids)
    want_eval = split == "eval"
    return [i for i in ids if in_eval(seed, i, eval_fraction) == want_eval]


def shuffled(ids: Iterable[str], seed: int) -> list[str]:
    """`ids` in the seeded hash order (ties impossible in practice; broken by id)."""
    return sorted(ids, key=lambda i: (_unit(f"{seed}\x1f{i}"), i))


def select(
    docs: Mapping[str, Sequence[Document]],
    *,
    source: str,
    languages: Sequence[str],
    split: Split,
    docs_per_language: int | None,
    seed: int,
    eval_fraction: float,
    aligned: bool,
) -> dict[str, list[Document]]:
    """Apply the split and the sample to already-read documents.

    Aligned (parallel) corpora keep only items present in every requested language and
    return the same ids in the same order for all of them; `docs[l][i]` is one item across
    languages. Asking for more documents than there are is an error, never a shorter list.
    """
    n = docs_per_language
    if aligned:
        by_lang = {lang: {d.id: d for d in docs[lang]} for lang in languages}
        first = languages[0]
        common = [d.id for d in docs[first] if all(d.id in by_lang[lang] for lang in languages)]
        chosen = split_ids(seed, common, split, eval_fraction)
        if n is not None:
            if len(chosen) < n:
                poorest, count = _poorest(docs, languages, seed, split, eval_fraction)
                where = f"present in all of {', '.join(languages)}" if len(languages) > 1 else f"for {first!r}"
                fewest = f" (fewest: {poorest!r} with {count})" if len(languages) > 1 else ""
                raise corpus_error(
                    source,
                    f"only {len(chosen)} aligned items {where} in split {split!r}, {n} requested{fewest}",
                    language=poorest,
                )
            chosen = shuffled(chosen, seed)[:n]
        elif not chosen:
            raise corpus_error(source, f"no aligned items present in all of {', '.join(languages)} in split {split!r}")
        return {lang: [by_lang[lang][i] for i in chosen] for lang in languages}

    out: dict[str, list[Document]] = {}
    for lang in languages:
        by_id = {d.id: d for d in docs[lang]}
        chosen = split_ids(seed, by_id, split, eval_fraction)
        if n is not None:
            if len(chosen) < n:
                raise corpus_error(
                    source, f"only {len(chosen)} documents for {lang!r} in split {split!r}, {n} requested", language=lang
                )
            chosen = shuffled(chosen, seed)[:n]
        elif not chosen:
            raise corpus_error(source, f"no documents for {lang!r} in split {split!r}", language=lang)
        out[lang] = [by_id[i] for i in chosen]
    return out


def _poorest(
    docs: Mapping[str, Sequence[Document]], languages: Sequence[str], seed: int, split: Split, eval_fraction: float
) -> tuple[str, int]:
    """The language with the fewest documents in the split (the one to blame) and its count."""
    counts = {lang: len(split_ids(seed, (d.id for d in docs[lang]), split, eval_fraction)) for lang in languages}
    lang = min(languages, key=counts.__getitem__)
    return lang, counts[lang]
