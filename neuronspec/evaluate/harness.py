"""lm-evaluation-harness tasks on the model a stage already holds.

lm-eval's `HFLM` wraps an instantiated model and tokenizer, so the arm's forward hooks (or
its enhancement delta written into the weights) apply to every request and nothing is
saved or reloaded per arm. The reported value is the task's primary metric (or the one
asked for) with lm-eval's standard error. A task whose dataset cannot be loaded raises an
error naming the task and the dataset — never a silent zero.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from neuronspec.plan.tasks import CORPUS_PLACEHOLDER, data_paths, local_data_path
from neuronspec.report.model import Headline


class TaskError(RuntimeError):
    """An lm-eval task could not be built, loaded or scored."""


@dataclass
class HarnessResult:
    task: str
    metric: str  # lm-eval's "metric,filter" key
    value: float
    stderr: float | None
    ci_low: float | None  # value ± 1.96 stderr
    ci_high: float | None
    n: int  # items scored
    higher_is_better: bool
    num_fewshot: int | None
    lm_eval_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> Headline:
        """The same headline as neuronspec's own evaluators (CI: value ± 1.96 stderr)."""
        return Headline(metric=self.metric, value=self.value, n=self.n, higher_is_better=self.higher_is_better,
                        ci=None if self.ci_low is None or self.ci_high is None else (self.ci_low, self.ci_high))


def task_config(yaml_path: Path, corpus_file: Path | None = None) -> dict[str, Any]:
    """A local task's full config (includes merged, !function resolved, by lm-eval's own loader),
    with data files made absolute (they are relative to the YAML) and `{corpus}` filled in."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(yaml_path, resolve_func=True)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        def fix(entry: str) -> str:
            if entry == CORPUS_PLACEHOLDER:
                if corpus_file is None:
                    raise TaskError(f"task {cfg.get('task')!r} reads {CORPUS_PLACEHOLDER} but the evaluation has no corpus")
                return str(corpus_file)
            local = local_data_path(entry, yaml_path)
            return str(local) if local is not None else entry

        files = kwargs["data_files"]
        data_paths(cfg)  # validates the shape
        if isinstance(files, str):
            kwargs["data_files"] = fix(files)
        elif isinstance(files, list):
            kwargs["data_files"] = [fix(f) for f in files]
        else:
            kwargs["data_files"] = {k: fix(v) if isinstance(v, str) else [fix(f) for f in v] for k, v in files.items()}
        cfg["dataset_kwargs"] = kwargs
    return cfg


def write_corpus_jsonl(docs: Sequence[Any], path: Path) -> Path:
    """One JSON object per document: `id`, `text` and its meta fields (e.g. prompt, choices, label)."""
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({**d["meta"], "id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n")
    return path


def _pick_metric(task: str, scores: dict[str, Any], config: dict[str, Any], wanted: str | None) -> str:
    keys = [k for k in scores if "," in k and not k.split(",", 1)[0].endswith("_stderr")]
    if wanted is None:
        metrics = config.get("metric_list") or []
        if not metrics:
            raise TaskError(f"task {task!r} reports no metric; set metric_name (it has: {', '.join(keys) or 'none'})")
        wanted = str(metrics[0]["metric"])
    match = [k for k in keys if k == wanted or k.split(",", 1)[0] == wanted]
    if not match:
        raise TaskError(f"task {task!r} has no metric {wanted!r}; it reports: {', '.join(keys) or 'none'}")
    return match[0]


@contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's notes (one per call: the model is pre-built, default aggregations, …) would bury
    neuronspec's progress; its errors still surface as exceptions."""
    import logging

    loggers = [logging.getLogger(name) for name in ("lm_eval", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@functools.cache
def _shipped_tasks() -> Any:
    """lm-eval's index of the tasks it ships (built once per process: it parses a few thousand YAMLs)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _evaluate(lm: Any, spec: str | dict[str, Any], manager: Any, *, limit: int | None, num_fewshot: int | None,
              bootstrap: int, seed: int) -> dict[str, Any]:
    """What `lm_eval.simple_evaluate` does for one pre-built model — seeds, few-shot override, `evaluate` —
    without its environment report (it runs `pip list` and git in subprocesses: ~1.3 s per call)."""
    import random

    import numpy as np
    from lm_eval.evaluator import evaluate

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loaded = manager.load([spec])
    for task in loaded["tasks"].values():
        default = task.get_config("num_fewshot")
        if num_fewshot is not None and default != 0:  # lm-eval never overrides a task that pins 0 shots
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    return evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap, log_samples=False)


def run_task(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str,
    *,
    yaml_path: Path | None = None,
    corpus_docs: Sequence[Any] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    max_length: int | None = None,
    metric_name: str | None = None,
    batch_size: int = 8,
    bootstrap: int = 1000,
    seed: int = 0,
) -> HarnessResult:
    """Run one lm-eval task in this process on `model` as it is now (hooks and all).

    `yaml_path`: a local task's YAML (else `task` must be one lm-eval ships). `corpus_docs`:
    the documents written to the jsonl that `data_files: "{corpus}"` reads. `max_length`: the
    context window (requests lose tokens from the left; default: the model's).
    """
    try:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise TaskError(f"task {task!r} needs lm-evaluation-harness: pip install 'neuronspec[tasks]' ({exc})") from None
    from neuronspec.plan.tasks import lm_eval_version

    from neuronspec.progress import third_party_output

    with tempfile.TemporaryDirectory(prefix="neuronspec-task-") as tmp, _quiet(), third_party_output():
        corpus_file = write_corpus_jsonl(corpus_docs, Path(tmp) / "corpus.jsonl") if corpus_docs is not None else None
        if yaml_path is not None:
            spec: str | dict[str, Any] = task_config(yaml_path, corpus_file)
            manager = TaskManager(include_defaults=False)
        else:
            manager = _shipped_tasks()
            if task not in manager.all_subtasks:
                raise TaskError(f"lm-eval {lm_eval_version()} has no single task named {task!r} (groups and tags are "
                                "not evaluations; no include_path YAML defines it either)")
            spec = task
        config = spec if isinstance(spec, dict) else (manager.task_index[task].cfg or {})
        dataset = "/".join(str(config[k]) for k in ("dataset_path", "dataset_name") if config.get(k)) or None
        device = next(model.parameters()).device
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device), max_length=max_length)
        try:
            out = _evaluate(lm, spec, manager, limit=limit, num_fewshot=num_fewshot, bootstrap=bootstrap, seed=seed)
        except Exception as exc:  # datasets raise many types (ConnectionError, DatasetNotFoundError, FileNotFoundError, …)
            raise TaskError(f"lm-eval task {task!r} failed (dataset {dataset or '?'}): {type(exc).__name__}: {exc}") from exc
    if out is None or task not in out.get("results", {}):
        raise TaskError(f"lm-eval task {task!r} returned no result (dataset {dataset or '?'})")
    scores = out["results"][task]
    key = _pick_metric(task, scores, out["configs"].get(task, {}), metric_name)
    value = scores[key]
    if not isinstance(value, (int, float)):
        raise TaskError(f"lm-eval task {task!r}: metric {key} is {value!r}, not a number")
    metric, filt = key.split(",", 1)
    raw_se = scores.get(f"{metric}_stderr,{filt}")
    stderr = float(raw_se) if isinstance(raw_se, (int, float)) else None
    n = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
    if n == 0:
        raise TaskError(f"lm-eval task {task!r} scored no items (dataset {dataset or '?'})")
    higher = bool(out.get("higher_is_better", {}).get(task, {}).get(metric, True))
    return HarnessResult(task=task, metric=key, value=float(value), stderr=stderr,
                         ci_low=None if stderr is None else float(value) - 1.96 * stderr,
                         ci_high=None if stderr is None else float(value) + 1.96 * stderr,
                         n=n, higher_is_better=higher, num_fewshot=out.get("n-shot", {}).get(task),
                         lm_eval_version=lm_eval_version() or "?")
