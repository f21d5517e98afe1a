"""Tiny corpora and the base tiny study shared by the plan and report tests.

A module (not a conftest) so tests can import it by name: three made-up "languages" over
disjoint letter sets, so detection has something to find, in two shapes — independent
documents, and parallel items (the same letter pattern written in each alphabet).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Three made-up "languages" over disjoint letter sets, so detection has something to find.
ALPHABETS = {"en": "abcdefgh ", "fr": "ijklmnop ", "de": "qrstuvwx "}


def make_parallel_corpus(path: Path, items: int = 16, seed: int = 0) -> Path:
    """The same items in every language: item k is a "translation" with the same letter pattern."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(items):
            pattern = [rng.randrange(8) if rng.random() > 0.15 else -1 for _ in range(rng.randint(15, 30))]
            for lang, letters in ALPHABETS.items():
                text = "".join(letters[p] if p >= 0 else " " for p in pattern)
                f.write(json.dumps({"id": f"item-{i}", "lang": lang, "text": text}) + "\n")
    return path


def make_corpus(path: Path, docs: int = 20, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for lang, letters in ALPHABETS.items():
            for i in range(docs):
                text = "".join(rng.choice(letters) for _ in range(rng.randint(20, 40)))
                f.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": text}) + "\n")
    return path


#: PLND on ffn + attn.v + attn.o, exclusive sets, a partition arm and its random control (two draws), perplexity
STUDY = """\
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
  - {{name: early-random, deactivate: {{random_like: early, draws: 2}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 50}}
"""
