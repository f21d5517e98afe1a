"""A git repository holding a tiny study that was run, edited (ε and the arms) and run again.

Built once per module (two runs of a 3-layer model: a few seconds), so the diff, runs and
report tests read the same history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from report_helpers import STUDY, History, edit, git, make_corpus



@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURONSPEC_HOME", str(path))
        mp.delenv("NEURONSPEC_STORE", raising=False)
        yield path


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, home: Path) -> History:
    from neuronspec.cli import main
    from neuronspec.report.records import list_runs

    repo = tmp_path_factory.mktemp("repo")
    git(repo, "init", "-q")
    corpus = make_corpus(repo / "corpus.jsonl")
    study = repo / "studies" / "tiny.yaml"
    study.parent.mkdir()
    study.write_text(STUDY.format(model=tiny_model_dir, corpus=corpus))
    (repo / ".gitignore").write_text(".neuronspec/\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "tiny study")
    store = study.parent / ".neuronspec"
    assert main(["run", "-q", "--json", str(study)]) == 0
    study.write_text(edit(study.read_text()))
    assert main(["run", "-q", "--json", str(study)]) == 0
    second, first = (r["run_id"] for r in list_runs(store))  # newest first
    return History(repo, study, store, first, second, git(repo, "rev-parse", "HEAD"))
