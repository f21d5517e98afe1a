"""A study means the same files from any working folder, and splits depend only on item ids and the seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_studies import STUDY, make_corpus

from neuronspec.data import load_corpus


def test_three_spellings_of_one_file_give_identical_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    corpus = make_corpus(tmp_path / "mix.jsonl", docs=30)
    monkeypatch.chdir(tmp_path)
    kw = dict(languages=["en", "fr", "de"], docs_per_language=8, seed=3, eval_fraction=0.4)
    spellings = {
        "relative": ("mix.jsonl", {}),
        "absolute": (str(corpus), {}),
        "hf:json": ("hf:json", {"data_files": str(corpus), "id_field": "id"}),
    }
    for split in ("detect", "eval"):
        got = {name: {lang: [(d.id, d.text) for d in docs] for lang, docs in
                      load_corpus(source, split=split, options=options, **kw).items()}
               for name, (source, options) in spellings.items()}
        assert got["relative"] == got["absolute"] == got["hf:json"], split
        assert all(len(v) == 8 for v in got["relative"].values())
    # independently of the loader: the eval documents are exactly those whose id hashes low with the seed
    from neuronspec.data.splits import in_eval

    ids = [json.loads(line)["id"] for line in corpus.read_text().splitlines() if json.loads(line)["lang"] == "en"]
    evals = {d.id for d in load_corpus("mix.jsonl", ["en"], split="eval", seed=3, eval_fraction=0.4)["en"]}
    assert evals == {i for i in ids if in_eval(3, i, 0.4)}


def test_a_study_run_from_another_folder_finds_its_relative_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    project = tmp_path / "project"
    (project / "studies").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, project / "tinyllama")
    make_corpus(project / "studies" / "corpus.jsonl")
    base = STUDY.format(model="../tinyllama", corpus="corpus.jsonl")
    (project / "studies" / "base.yaml").write_text(base)
    (project / "studies" / "tiny.yaml").write_text("extends: base.yaml\nname: tiny-rel\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "NEURONSPEC_HOME": str(tmp_path / "home")}
    env.pop("NEURONSPEC_STORE", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "neuronspec.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)

    study = "../project/studies/tiny.yaml"
    for command in (["validate", study], ["run", "-q", "--only", "eval/ppl/base/*", study]):
        done = cli(*command)
        assert done.returncode == 0, done.stderr
    store = project / "studies" / ".neuronspec"
    assert store.is_dir() and not (elsewhere / ".neuronspec").exists()
    assert (store / ".gitignore").read_text().splitlines()[-1] == "*"
    # runs, report latest and diff RUN_ID find that store from here
    runs = cli("runs", study, "--json")
    assert runs.returncode == 0, runs.stderr
    run_id = json.loads(runs.stdout)[0]["run_id"]
    report = cli("report", "latest", "--study", study, "-q")
    assert report.returncode == 0 and "report.html" in report.stdout, report.stderr
    diff = cli("diff", "--study", study, run_id, study)
    assert diff.returncode == 0, diff.stderr
    assert not (elsewhere / ".neuronspec").exists()
