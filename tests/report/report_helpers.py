"""Helpers for the report tests: a tiny study, its edit, a local corpus, git in a temp repo."""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

ALPHABETS = {"en": "abcdefgh ", "fr": "ijklmnop ", "de": "qrstuvwx "}

STUDY = """\
# yaml-language-server: $schema=../schemas/study.schema.json
name: tiny
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.v, attn.o], epsilon: {{quantile: 0.9}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
partitions: {{early: [0, 2], late: [2, 3]}}
arms:
  - {{name: early, deactivate: {{neurons: specific, layers: early}}}}
  - {{name: early-random, deactivate: {{random_like: early}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 50}}
report: {{formats: [json, markdown, png]}}
"""


def edit(text: str, epsilon: str = "0.8") -> str:
    """The second version: ε changed, one arm changed (seed), one added — at the front, so
    a positional diff of `arms` would pair the wrong arms."""
    return (text.replace("quantile: 0.9", f"quantile: {epsilon}")
            .replace("{random_like: early}", "{random_like: early, seed: 7}")
            .replace("arms:\n", "arms:\n  - {name: late, deactivate: {neurons: specific, layers: late}}\n"))


def make_corpus(path: Path, docs: int = 20, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for lang, letters in ALPHABETS.items():
            for i in range(docs):
                text = "".join(rng.choice(letters) for _ in range(rng.randint(20, 40)))
                f.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": text}) + "\n")
    return path


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
