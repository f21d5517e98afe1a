"""Helpers for the report tests: a tiny study, its edit, a local corpus, git in a temp repo."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tiny_studies import STUDY as BASE_STUDY
from tiny_studies import make_corpus  # noqa: F401  (the report tests' corpus)

#: the plan tests' tiny study, with the schema modeline and every report format
STUDY = "# yaml-language-server: $schema=../schemas/study.schema.json\n" + BASE_STUDY + "report: {{formats: [json, markdown, png]}}\n"


def edit(text: str, epsilon: str = "0.8") -> str:
    """The second version: ε changed, one arm changed (seed), one added — at the front, so
    a positional diff of `arms` would pair the wrong arms."""
    return (text.replace("quantile: 0.9", f"quantile: {epsilon}")
            .replace("{random_like: early, draws: 2}", "{random_like: early, draws: 2, seed: 7}")
            .replace("arms:\n", "arms:\n  - {name: late, deactivate: {neurons: specific, layers: late}}\n"))


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
                          cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass
class History:
    repo: Path
    study: Path
    store: Path
    first: str  # run id of the committed study
    second: str  # run id of the edited working tree
    commit: str
