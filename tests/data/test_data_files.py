"""Local .jsonl / .txt / .parquet corpora and `hf:` datasets loaded from local files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronspec.data import CorpusError, corpus_identity, load_corpus

LANGS = ("en", "fr", "hi")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def parallel_rows(n: int = 50) -> list[dict]:
    return [{"id": f"s{i}", "lang": lang, "text": f"sentence {i} in {lang}"} for i in range(n) for lang in LANGS]


def test_jsonl_parallel_split_is_aligned(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "par.jsonl", parallel_rows())
    kw = dict(options={"base_dir": str(tmp_path)}, eval_fraction=0.4)
    detect = load_corpus("data/par.jsonl", ["en", "fr", "hi"], split="detect", **kw)
    evals = load_corpus("data/par.jsonl", ["en", "fr", "hi"], split="eval", **kw)
    for split in (detect, evals):
        ids = [[d.id for d in split[lang]] for lang in LANGS]
        assert ids[0] == ids[1] == ids[2]
    assert not {d.id for d in detect["en"]} & {d.id for d in evals["en"]}
    assert len(detect["en"]) + len(evals["en"]) == 50
    sample = load_corpus("data/par.jsonl", ["hi", "en"], docs_per_language=10, seed=3, **kw)
    assert [d.id for d in sample["hi"]] == [d.id for d in sample["en"]] and len(sample["en"]) == 10
    assert sample["hi"][0].text.endswith("in hi") and sample["hi"][0].lang == "hi"


def test_jsonl_custom_fields_and_meta(tmp_path: Path) -> None:
    rows = [{"sentence": f"t{i}", "language": "en", "key": f"k{i}", "label": i % 4, "meta": {"src": "x"}} for i in range(5)]
    write_jsonl(tmp_path / "t.jsonl", rows)
    out = load_corpus(str(tmp_path / "t.jsonl"), ["en"],
                      options={"text_field": "sentence", "lang_field": "language", "id_field": "key"})
    doc = out["en"][0]
    assert doc.id == "k0" and doc.text == "t0" and doc.meta == {"src": "x", "label": 0}


def test_jsonl_ids_default_to_positions_and_monolingual(tmp_path: Path) -> None:
    rows = [{"lang": lang, "text": f"{lang} doc {i}"} for lang in ("en", "fr") for i in range(8 if lang == "en" else 4)]
    write_jsonl(tmp_path / "m.jsonl", rows)
    out = load_corpus(str(tmp_path / "m.jsonl"), ["en", "fr"], docs_per_language=4)
    assert len(out["en"]) == len(out["fr"]) == 4
    assert {d.id for d in out["fr"]} == {"0", "1", "2", "3"}


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "lang": "en", "text": "x"}, {"id": "a", "lang": "en", "text": "y"}])
    with pytest.raises(CorpusError, match=r"dup.jsonl:2: duplicate id 'a' for language 'en'"):
        load_corpus(str(tmp_path / "dup.jsonl"), ["en"])
    write_jsonl(tmp_path / "nolang.jsonl", [{"text": "x"}])
    with pytest.raises(CorpusError, match=r"nolang.jsonl:1: no language field 'lang'"):
        load_corpus(str(tmp_path / "nolang.jsonl"), ["en"])
    (tmp_path / "bad.jsonl").write_text('{"lang": "en", "text": "ok"}\n{oops\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        load_corpus(str(tmp_path / "bad.jsonl"), ["en"])


def test_missing_file_and_unknown_language(tmp_path: Path) -> None:
    with pytest.raises(CorpusError) as err:
        load_corpus("data/x.jsonl", ["en"], options={"base_dir": str(tmp_path)})
    assert str(err.value).startswith("file corpus 'data/x.jsonl': file not found")
    write_jsonl(tmp_path / "data" / "x.jsonl", parallel_rows(3))
    with pytest.raises(CorpusError) as err:
        load_corpus("data/x.jsonl", ["en", "xx"], options={"base_dir": str(tmp_path)})
    assert str(err.value) == "file corpus 'data/x.jsonl': language 'xx' not available (has: en, fr, hi)"
    assert err.value.language == "xx"
    with pytest.raises(CorpusError, match=r"unknown option\(s\) txt_field"):
        load_corpus("data/x.jsonl", ["en"], options={"base_dir": str(tmp_path), "txt_field": "t"})
    with pytest.raises(CorpusError, match=r"unsupported file type"):
        load_corpus("data/x.csv", ["en"])


def test_txt_per_language(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("one\n\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_text("un\ndeux\n", encoding="utf-8")
    out = load_corpus(str(tmp_path / "{lang}.txt"), ["en", "fr"])
    assert [(d.id, d.text) for d in out["en"]] == [("1", "one"), ("3", "two"), ("4", "three")]
    assert [d.text for d in out["fr"]] == ["un", "deux"]
    with pytest.raises(CorpusError) as err:
        load_corpus(str(tmp_path / "{lang}.txt"), ["en", "hi"])
    msg = str(err.value)
    assert "no file for language 'hi'" in msg and "files found for: en, fr" in msg and err.value.language == "hi"
    with pytest.raises(CorpusError, match=r"a \.txt file holds one language"):
        load_corpus(str(tmp_path / "en.txt"), ["en"])
    assert [d.text for d in load_corpus(str(tmp_path / "en.txt"), ["en"], options={"lang": "en"})["en"]][0] == "one"
    # Line-aligned files become parallel only when told so.
    (tmp_path / "fr.txt").write_text("un\n\ndeux\ntrois\n", encoding="utf-8")
    par = load_corpus(str(tmp_path / "{lang}.txt"), ["en", "fr"], docs_per_language=2, options={"parallel": True})
    assert [d.id for d in par["en"]] == [d.id for d in par["fr"]]


def test_lang_codes_map_file_names(tmp_path: Path) -> None:
    (tmp_path / "zho_Hans.txt").write_text("你好\n", encoding="utf-8")
    out = load_corpus(str(tmp_path / "{lang}.txt"), ["zh"], options={"lang_codes": {"zh": "zho_Hans"}})
    assert out["zh"][0].text == "你好" and out["zh"][0].lang == "zh"


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = parallel_rows(10)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    out = load_corpus(str(tmp_path / "p.parquet"), ["fr", "en"], docs_per_language=5)
    assert [d.id for d in out["fr"]] == [d.id for d in out["en"]]
    assert out["fr"][0].text.endswith("in fr")


def test_hf_local_json_and_parquet(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "all.jsonl", parallel_rows(12))
    out = load_corpus("hf:json", ["en", "hi"], docs_per_language=5,
                      options={"data_files": "all.jsonl", "base_dir": str(tmp_path)})
    assert [d.id for d in out["en"]] == [d.id for d in out["hi"]] and len(out["en"]) == 5
    # One file per language, addressed by {lang} in data_files, rows without a language field.
    for lang in ("en", "fr"):
        write_jsonl(tmp_path / "per" / f"{lang}.jsonl", [{"content": f"{lang} {i}"} for i in range(6)])
    out = load_corpus("hf:json", ["en", "fr"], options={"data_files": str(tmp_path / "per" / "{lang}.jsonl"),
                                                        "text_field": "content"})
    assert [d.text for d in out["fr"]][:2] == ["fr 0", "fr 1"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(parallel_rows(4)), tmp_path / "p.parquet")
    out = load_corpus("hf:parquet", ["en"], options={"data_files": str(tmp_path / "p.parquet")})
    assert len(out["en"]) == 4
    with pytest.raises(CorpusError, match=r"^hf:json: could not load"):
        load_corpus("hf:json", ["en"], options={"data_files": str(tmp_path / "missing.jsonl")})
    with pytest.raises(CorpusError, match=r"^hf:json: language 'xx' not available \(has: en, fr, hi\)"):
        load_corpus("hf:json", ["xx"], options={"data_files": str(tmp_path / "all.jsonl")})


def test_identity_follows_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", parallel_rows(3))
    first = corpus_identity("c.jsonl", {"base_dir": str(tmp_path)})
    assert first == corpus_identity("c.jsonl", {"base_dir": str(tmp_path)})
    assert "base_dir" not in json.dumps(first)  # moving the study folder keeps cache keys
    write_jsonl(path, parallel_rows(4))
    assert corpus_identity("c.jsonl", {"base_dir": str(tmp_path)}) != first
    assert corpus_identity("c.jsonl", {"base_dir": str(tmp_path), "text_field": "t"}) != corpus_identity(
        "c.jsonl", {"base_dir": str(tmp_path)})
    (tmp_path / "en.txt").write_text("a\n")
    templ = corpus_identity(str(tmp_path / "{lang}.txt"))
    (tmp_path / "fr.txt").write_text("b\n")
    assert corpus_identity(str(tmp_path / "{lang}.txt")) != templ
    hf = corpus_identity("hf:json", {"data_files": "c.jsonl", "base_dir": str(tmp_path)})
    assert hf["local_sha256"] and hf["revision"] is None


def test_argument_validation(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", parallel_rows(3))
    path = str(tmp_path / "c.jsonl")
    for kwargs, pattern in [
        ({"languages": []}, "no languages requested"),
        ({"languages": ["en", "en"]}, "requested twice: en"),
        ({"languages": ["en"], "split": "test"}, "unknown split 'test'"),
        ({"languages": ["en"], "docs_per_language": 0}, "docs_per_language must be a positive integer"),
        ({"languages": ["en"], "eval_fraction": 1.5}, r"eval_fraction must be within \[0, 1\]"),
    ]:
        with pytest.raises(CorpusError, match=pattern):
            load_corpus(path, **kwargs)  # type: ignore[arg-type]
