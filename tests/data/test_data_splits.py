"""Splits are deterministic, disjoint and aligned; samples are seeded, stable and exact."""

from __future__ import annotations

import pytest

from neuronspec.data import CorpusError, Document
from neuronspec.data.splits import eval_score, in_eval, select, shuffled, split_ids

IDS = [f"item-{i}" for i in range(2000)]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    detect = split_ids(0, IDS, "detect", 0.3)
    evals = split_ids(0, IDS, "eval", 0.3)
    assert detect == split_ids(0, IDS, "detect", 0.3)
    assert not set(detect) & set(evals)
    assert sorted(detect + evals) == sorted(IDS)
    assert split_ids(0, IDS, "all", 0.3) == IDS
    assert 0.25 < len(evals) / len(IDS) < 0.35


def test_split_depends_on_seed_and_id_only() -> None:
    assert 0 <= eval_score(0, "GEN.1.1") < 1
    # The study seed reshuffles the assignment; the source is not an input at all, so a file
    # named by another path (or read through hf:json) splits the same way.
    a = split_ids(1, IDS, "eval", 0.3)
    b = split_ids(2, IDS, "eval", 0.3)
    assert a != b
    # The split is not the head of the sample order for the same seed (salted apart).
    head = shuffled(IDS, 1)[: len(a)]
    assert 0.2 < len(set(head) & set(a)) / len(a) < 0.4
    # Growing the fraction only moves items into eval, never out of it.
    assert set(split_ids(1, IDS, "eval", 0.3)) <= set(split_ids(1, IDS, "eval", 0.5))
    # Membership does not depend on which other ids exist.
    assert in_eval(1, a[0], 0.3) and split_ids(1, [a[0]], "eval", 0.3) == [a[0]]


def test_shuffle_is_seeded_stable_and_prefix_consistent() -> None:
    assert shuffled(IDS, 0) == shuffled(list(reversed(IDS)), 0)
    assert shuffled(IDS, 0) != shuffled(IDS, 1)
    assert sorted(shuffled(IDS, 3)) == sorted(IDS)
    # The sample of 100 is the first 100 of the sample of 200, and adding ids never reorders old ones.
    assert shuffled(IDS, 0)[:100] == [i for i in shuffled(IDS + ["new-1", "new-2"], 0) if not i.startswith("new")][:100]


def _docs(lang: str, ids: list[str]) -> list[Document]:
    return [Document(i, lang, f"{lang} text {i}", {}) for i in ids]


def test_select_aligned_keeps_common_items_in_the_same_order() -> None:
    docs = {
        "en": _docs("en", IDS[:300]),
        "fr": _docs("fr", IDS[50:350]),
        "hi": _docs("hi", list(reversed(IDS[:400]))),
    }
    kw = dict(source="p", languages=["en", "fr", "hi"], seed=7, eval_fraction=0.3, aligned=True)
    out = select(docs, split="eval", docs_per_language=40, **kw)
    ids = [[d.id for d in out[lang]] for lang in ("en", "fr", "hi")]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 40 and len(set(ids[0])) == 40
    assert set(ids[0]) <= set(IDS[50:300])
    assert all(in_eval(7, i, 0.3) for i in ids[0])
    assert out["hi"][0].lang == "hi"
    detect = select(docs, split="detect", docs_per_language=None, **kw)
    assert not {d.id for d in detect["en"]} & {d.id for d in select(docs, split="eval", docs_per_language=None, **kw)["en"]}
    assert [d.id for d in detect["en"]] == [d.id for d in detect["hi"]]
    # Same arguments, same documents; another seed, another sample.
    assert select(docs, split="eval", docs_per_language=40, **kw) == out
    other = select(docs, split="eval", docs_per_language=40, **{**kw, "seed": 8})
    assert [d.id for d in other["en"]] != ids[0]


def test_select_monolingual_samples_each_language() -> None:
    docs = {"en": _docs("en", IDS[:100]), "fr": _docs("fr", [f"fr-{i}" for i in range(60)])}
    out = select(docs, source="m", languages=["en", "fr"], split="all", docs_per_language=50, seed=0,
                 eval_fraction=0.3, aligned=False)
    assert len(out["en"]) == len(out["fr"]) == 50
    assert all(d.id.startswith("fr-") for d in out["fr"])


def test_too_few_documents_is_an_error_naming_corpus_language_and_split() -> None:
    docs = {"en": _docs("en", IDS[:200]), "hi": _docs("hi", IDS[:40])}
    with pytest.raises(CorpusError) as err:
        select(docs, source="data/x.jsonl", languages=["en", "hi"], split="eval", docs_per_language=100, seed=0,
               eval_fraction=0.3, aligned=False)
    msg = str(err.value)
    assert msg.startswith("file corpus 'data/x.jsonl': only ") and "'en'" in msg
    assert "split 'eval'" in msg and "100 requested" in msg and err.value.language == "en"
    with pytest.raises(CorpusError) as err:
        select(docs, source="builtin:bible", languages=["en", "hi"], split="all", docs_per_language=41, seed=0,
               eval_fraction=0.3, aligned=True)
    msg = str(err.value)
    assert msg.startswith("builtin:bible: only 40 aligned items present in all of en, hi in split 'all', 41 requested")
    assert "(fewest: 'hi' with 40)" in msg and err.value.language == "hi"


def test_empty_split_is_an_error() -> None:
    docs = {"en": _docs("en", IDS[:5])}
    with pytest.raises(CorpusError, match=r"no documents for 'en' in split 'eval'"):
        select(docs, source="s", languages=["en"], split="eval", docs_per_language=None, seed=0, eval_fraction=0.0,
               aligned=False)
