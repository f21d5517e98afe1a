"""A tiny saved model and a local multilingual corpus, so studies run end to end in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_studies import STUDY, make_corpus, make_parallel_corpus



@pytest.fixture
def study_file(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    corpus = make_corpus(tmp_path / "corpus.jsonl")
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY.format(model=tiny_model_dir, corpus=corpus))
    return path


ENHANCE_STUDY = """\
name: tiny-enhance
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.v], epsilon: {{quantile: 0.8}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: tune, enhance: {{neurons: specific, corpus: detect, docs: 6, languages: [fr, de], lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
  - {{name: tune-random, enhance: {{random_like: tune, corpus: detect, docs: 6, lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 20}}
"""


@pytest.fixture
def enhance_study(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    corpus = make_corpus(tmp_path / "corpus.jsonl")
    path = tmp_path / "enhance.yaml"
    path.write_text(ENHANCE_STUDY.format(model=tiny_model_dir, corpus=corpus))
    return path


METHODS_STUDY = """\
name: tiny-methods
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 12, max_tokens: 32}}
detect:
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: {z}}}
  sharing: {{corpus: parallel, thresholds: [0.0, 0.05]}}
analyses:
  logit_lens: {{corpus: parallel}}
neurons:
  regions: linguafranca[lang]
  lape_only: lape[lang] - sharing.all_shared
arms:
  - {{name: regions, deactivate: {{neurons: regions}}}}
  - {{name: shared, deactivate: {{neurons: sharing.all_shared}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: parallel, bootstrap: 20}}
"""


@pytest.fixture
def methods_study(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    corpus = make_parallel_corpus(tmp_path / "parallel.jsonl")

    def write(z: float = 1.0) -> Path:
        path = tmp_path / "methods.yaml"
        path.write_text(METHODS_STUDY.format(model=tiny_model_dir, corpus=corpus, z=z))
        return path

    return write


@pytest.fixture
def parallel_corpus(tmp_path: Path) -> Path:
    return make_parallel_corpus(tmp_path / "parallel.jsonl")
