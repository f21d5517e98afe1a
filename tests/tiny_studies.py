"""Tiny corpora and the tiny studies shared by the plan and report tests (and benchmarks/gpu_check.py).

A module (not a conftest) so tests can import it by name: three made-up "languages" over
disjoint letter sets, so detection has something to find, in two shapes — independent
documents, and parallel items (the same letter pattern written in each alphabet).
"""

from __future__ import annotations

import json
import random
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


#: Every stage kind in one small study — PLND on all five sites, LAPE, LinguaFranca, Sharing with
#: Integrated-Gradients attribution, the logit lens, a deactivation arm, its random control, a
#: mean-ablation arm and an enhance arm, the perplexity, multiple-choice and generation
#: evaluators, and (with lm-eval installed) an lm-eval task — on a random Gemma-3-shaped model. benchmarks/gpu_check.py runs it
#: on a GPU, tests/plan/test_stage_devices.py on a pretend one (tests/fake_cuda.py).
EVERY_KIND = """\
name: every-kind
model: {{id: {model}, dtype: {dtype}, device: {device}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 48, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 48, eval_fraction: 0.4}}
  parallel: {{source: {parallel}, docs_per_language: 8, max_tokens: 48}}
  choice: {{source: {choice}, max_tokens: 48}}
  gen: {{source: {gen}, max_tokens: 48}}
detect:
  plnd: {{sites: [all], epsilon: {{quantile: 0.9}}, batch_size: 4}}
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
  sharing: {{corpus: parallel, thresholds: [0.0], attribution: {{method: ig, steps: 8, probes: 4, docs: 1, layers: [0]}}}}
analyses:
  logit_lens: {{corpus: parallel}}
neurons:
  specific: plnd[lang] - plnd[others]
partitions: {{early: [0, 1], late: [1, 2]}}
arms:
  - {{name: early, deactivate: {{neurons: specific, layers: early}}}}
  - {{name: early-random, deactivate: {{random_like: early}}}}
  - {{name: early-mean, deactivate: {{neurons: specific, layers: early, ablation: mean, mean_corpus: detect}}}}
  - {{name: tune, enhance: {{neurons: specific, corpus: detect, docs: 4, languages: [fr], lr: 0.01, effective_batch: 2, micro_batch: 2, seq_len: 32}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, bootstrap: 10}}
  choice: {{metric: choice, corpus: choice, arms: [early], bootstrap: 10}}
  gen: {{metric: generation, corpus: gen, arms: [early], options: {{max_new_tokens: 4}}}}
"""
_LM_EVAL = "  harness: {{metric: lm_eval, tasks: [tiny_choice], include_path: {tasks}, limit: 6, arms: [early], batch_size: 4}}\n"
#: a local lm-eval multiple-choice task; `.replace("DATA_FILE", path)` says where its jsonl is
LM_EVAL_CHOICE_TASK = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files: {test: DATA_FILE}
test_split: test
output_type: multiple_choice
doc_to_text: "{{prompt}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""


def _task_files(folder: Path) -> tuple[Path, Path]:
    """Multiple-choice and generation items in each language (prompt / choices / label, prompt / reference)."""
    rng = random.Random(0)
    choice, gen = folder / "choice.jsonl", folder / "gen.jsonl"
    with choice.open("w") as c, gen.open("w") as g:
        for lang, letters in ALPHABETS.items():
            for i in range(4):
                word = lambda n: "".join(rng.choice(letters[:-1]) for _ in range(n))  # noqa: E731
                meta = {"prompt": word(12), "choices": [" " + word(3), " " + word(3)], "label": i % 2}
                c.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": meta["prompt"], "meta": meta}) + "\n")
                meta = {"prompt": word(12), "reference": word(6)}
                g.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": meta["prompt"], "meta": meta}) + "\n")
    return choice, gen


def _lm_eval_tasks(folder: Path, choice: Path) -> Path:
    """A local lm-eval multiple-choice task over the same items (lm-eval reads its own jsonl shape)."""
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(LM_EVAL_CHOICE_TASK.replace("DATA_FILE", "choice.jsonl"))
    with (tasks / "choice.jsonl").open("w") as f:
        for line in choice.read_text().splitlines():
            f.write(json.dumps(json.loads(line)["meta"]) + "\n")
    return tasks


def _gemma_folder(folder: Path) -> Path:
    """A random Gemma-3-shaped model (sliding windows, q/k norms, GQA) saved with the character tokenizer."""
    from neuronspec.models.testing import tiny_tokenizer
    from neuronspec.models.tiny import tiny_model

    out = folder / "model"
    tiny_model("gemma3_text", num_attention_heads=4, num_key_value_heads=1, head_dim=16,
               query_pre_attn_scalar=32).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def write_every_kind_study(folder: Path, *, device: str, dtype: str, lm_eval: bool) -> Path:
    """:data:`EVERY_KIND` with its model, corpora and task files written under `folder`; the study's path."""
    choice, gen = _task_files(folder)
    text = EVERY_KIND.format(model=_gemma_folder(folder), dtype=dtype, device=device,
                             corpus=make_corpus(folder / "corpus.jsonl"),
                             parallel=make_parallel_corpus(folder / "parallel.jsonl"), choice=choice, gen=gen)
    if lm_eval:
        text += _LM_EVAL.format(tasks=_lm_eval_tasks(folder, choice))
    path = folder / "study.yaml"
    path.write_text(text)
    return path


@dataclass
class KindRun:
    kind: str
    stages: list[str]
    error: BaseException | None = None  # the failed stage's own exception (not the runner's wrapper)
    failed_stage: str | None = None  # which stage raised: one of this kind's, or an input of another kind

    def where(self) -> str:
        """Where it failed: the innermost neuronspec frame (file:line in function), and the stage
        when it was an input of another kind."""
        if self.error is None:
            return ""
        frames = [f for f in traceback.extract_tb(self.error.__traceback__) if "/neuronspec/" in f.filename]
        at = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
        return at if self.failed_stage in self.stages else f"{at}; its input {self.failed_stage} failed"


def run_each_kind(study: Path, store: Path, overrides: Sequence[str] = ()) -> Iterator[KindRun]:
    """Run a study (with `key=value` overrides) one stage kind at a time, in dependency order, so one
    failing kind does not hide the others (a kind's stages run with `only=`; what they need and is
    missing runs with them)."""
    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.runner import StageFailed, run_plan
    from neuronspec.plan.store import Store
    from neuronspec.spec import load_study

    loaded = load_study(study, overrides)
    plan = compile_study(loaded)
    kinds = list(dict.fromkeys(stage.kind for stage in plan.stages.values()))
    for kind in kinds:
        ids = [sid for sid, stage in plan.stages.items() if stage.kind == kind]
        try:
            run_plan(plan, Store(store), loaded.study, only=ids)
            yield KindRun(kind, ids)
        except StageFailed as failed:
            yield KindRun(kind, ids, failed.error, failed.stage.id)
