"""hf: corpora: an unpinned hub dataset is keyed by the commit it resolves to; max_rows streams."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_studies import make_corpus

from neuronspec.data import CorpusError, corpus_identity, load_corpus


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _set_ref(cache: Path, dataset: str, sha: str) -> None:
    ref = cache / f"datasets--{dataset.replace('/', '--')}" / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(sha)


def test_unpinned_hub_dataset_is_keyed_by_its_resolved_commit(hub_cache: Path) -> None:
    _set_ref(hub_cache, "someorg/texts", "a" * 40)
    first = corpus_identity("hf:someorg/texts")
    assert first["revision"] == "a" * 40
    _set_ref(hub_cache, "someorg/texts", "b" * 40)  # the dataset moved on upstream
    assert corpus_identity("hf:someorg/texts")["revision"] == "b" * 40
    pinned = corpus_identity("hf:someorg/texts", {"revision": "c" * 40})
    assert pinned["revision"] == "c" * 40


def test_unresolvable_unpinned_dataset_asks_for_a_revision(hub_cache: Path) -> None:
    with pytest.raises(CorpusError, match="set `revision:` to a commit"):
        corpus_identity("hf:someorg/never-downloaded")


def test_local_builders_are_keyed_by_content_not_revision(tmp_path: Path, hub_cache: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl")
    ident = corpus_identity("hf:json", {"data_files": str(corpus)})
    assert ident["revision"] is None and ident["local_sha256"]


def test_max_rows_reads_only_the_first_rows(tmp_path: Path, hub_cache: Path) -> None:
    pytest.importorskip("datasets")
    corpus = make_corpus(tmp_path / "c.jsonl", docs=20)  # en rows first, then fr, then de
    out = load_corpus("hf:json", ["en"], options={"data_files": str(corpus), "id_field": "id", "max_rows": 12})
    assert sorted(d.id for d in out["en"]) == sorted(f"en-{i}" for i in range(12))
    with pytest.raises(CorpusError, match="'fr' not available"):
        load_corpus("hf:json", ["fr"], options={"data_files": str(corpus), "id_field": "id", "max_rows": 12})
