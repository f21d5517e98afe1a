"""`neuronspec init NAME`: a commented starter study that validates as written.

It is the quickstart's shape with every section explained, so a new user edits a
working study instead of writing one from the schema.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SCHEMA_MODELINE = "../schemas/study.schema.json"
#: the schema as installed with the package (package data, byte-identical with the repository's schemas/)
INSTALLED_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "study.schema.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Study.name's pattern

_TEMPLATE = """\
# yaml-language-server: $schema={schema}
#
# {name}: a starter study. Every section is explained; delete what you do not need.
#   neuronspec validate {file}     check it (every problem as FILE:LINE:COL)
#   neuronspec plan {file}         the stages it compiles to, and which are cached
#   neuronspec run {file}          run what is stale, print the tables, write a run record
#   neuronspec diff --rev HEAD {file}   after an edit: what changed, what it re-runs, what moved
name: {name}
description: PLND language-specific neurons vs as many random neurons, perplexity per language.

# An embedded name (gemma-3-270m, smollm2-135m: real weights that work offline), a hub id,
# a local folder or a .gguf file. The cache key includes the weights' digest.
model: {{id: gemma-3-270m, dtype: float32, device: cpu}}

# ISO 639-1 codes.
languages: [en, zh, fr, ru]

# Text sources: builtin:NAME (`neuronspec corpora`), a local .jsonl/.txt/.parquet path
# ({{lang}} placeholder allowed) or hf:DATASET. `split` makes detection and evaluation
# documents disjoint.
corpora:
  detect: {{source: "builtin:bible-passages", split: detect, docs_per_language: 16, max_tokens: 128}}
  ppl: {{source: "builtin:bible-passages", split: eval, docs_per_language: 8, max_tokens: 128}}

# PLND (Zhao et al. 2024): a neuron is relevant for a language when its importance is at
# least ε on every document of that language. One forward pass per language computes the
# statistics; changing ε, the sets or the arms re-runs no forward pass.
detect:
  plnd:
    corpus: detect
    sites: [ffn, attn.v, attn.o]   # ffn, attn.q, attn.k, attn.v, attn.o (or attn, all)
    epsilon: {{quantile: 0.95}}      # or an absolute number, or one per site

# Named neuron sets by set algebra: | union, & intersection, - difference;
# plnd[lang] is this language's set, [all] / [any] / [others] / [xx] the others.
neurons:
  specific: plnd[lang] - plnd[others]   # exclusive: relevant for this language and no other

# Layer ranges [start, end). Gemma 3 270M has 18 layers (0..17).
partitions:
  understanding: [0, 4]
  task_solving: [4, 14]
  generation: [14, 18]

# What to switch off while evaluating. A random_like arm deactivates as many random
# neurons per site and layer as the arm it names: the control.
arms:
  - {{name: specific, deactivate: {{neurons: specific}}}}
  - {{name: specific-understanding, deactivate: {{neurons: specific, layers: understanding}}}}
  - {{name: random, deactivate: {{random_like: specific}}}}

# Evaluations: perplexity, choice (multiple choice) or generation. on: all evaluates every
# arm's per-language set on every language (the language x language matrix).
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, on: all, bootstrap: 200}}

# ΔEng / Δn-Eng are measured against this language.
report: {{baseline_language: en}}
seed: 0
"""


def schema_modeline(study: Path) -> str:
    """Where a study at `study` finds its schema: the checkout's `../schemas/` (the shipped studies'
    line, portable with the repository) where that exists, else the installed copy as a file URI,
    which resolves from any folder and always matches the installed neuronspec."""
    if Path(os.path.normpath(study.absolute().parent / SCHEMA_MODELINE)).is_file():  # the folder may not exist yet
        return SCHEMA_MODELINE
    return INSTALLED_SCHEMA.as_uri()


def starter_study(name: str, file: str = "STUDY.yaml", schema: str = SCHEMA_MODELINE) -> str:
    """The text of a starter study called `name`; `file` is how its comments refer to it."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"study name {name!r} must start with a letter or digit and use only letters, digits, _ . -")
    return _TEMPLATE.format(name=name, file=file, schema=schema)
