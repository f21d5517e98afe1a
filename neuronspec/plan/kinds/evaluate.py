"""Evaluation stages: neuronspec's own evaluators, and lm-evaluation-harness tasks, under an arm."""

from __future__ import annotations

from contextlib import nullcontext

from pathlib import Path
from typing import Any, Literal

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.activations import load_means
from neuronspec.plan.kinds.base import Context, StageSpec, load_set, read_docs
from neuronspec.plan.kinds.sets import Mask


class Evaluation(StageSpec):
    metric: str
    seed: int
    languages: list[str] | None  # generation's language-identification candidates (the study's languages)
    options: dict[str, Any]
    lang: str
    arm: str | None
    arm_kind: Literal["deactivate", "enhance"] | None
    mask_lang: str | None
    draw: int | None = None  # which draw of a random control with several (its mask is the input)
    random_like: str | None = None  # the arm that control matches, so the report can compare the two
    mean_corpus: str | None = None  # a mean-ablation arm: the corpus of its activation means (None: zeroed)


def evaluate(ctx: Context, stage: Stage, s: Evaluation, out: Path) -> None:
    from neuronspec.data import Document
    from neuronspec.evaluate import evaluator_options, run_evaluator
    from neuronspec.evaluate.prefix import first_layer, shared_prefix
    from neuronspec.models.masks import NeuronSet, zeroed
    from neuronspec.progress import reporting

    corpus_dep = next(d for d in stage.deps if ctx.plan.stages[d].kind == "corpus")
    docs = [Document(d["id"], d["lang"], d["text"], d["meta"]) for d in read_docs(ctx.input(stage, corpus_dep), s.lang)]
    neurons, modified = NeuronSet.empty(), nullcontext()
    start = 1 << 30  # the first layer that differs from the base model (see evaluate.prefix)
    if s.arm_kind == "deactivate":  # the arm's mask (of this draw, for a random control with several)
        neurons = load_set(ctx.input(stage, ids.mask(s.arm, s.draw)), artifacts.MASK, s.mask_lang)
        if not neurons:
            _copy_base(ctx, stage, out)
            return
        start = first_layer(neurons)
    lm = ctx.model()
    if s.arm_kind == "enhance":
        from neuronspec.enhance import Delta, apply_delta

        start = 0  # changed weights: nothing to share
        delta = Delta.load(ctx.input(stage, ids.enhance(s.arm, s.mask_lang)).file(artifacts.DELTA))
        modified = apply_delta(lm.model, delta)
    allowed = evaluator_options(s.metric)
    options = {k: v for k, v in s.options.items() if k in allowed}
    if "languages" in allowed:  # generation's language identification: the study's languages are the candidates
        options["languages"] = s.languages
    label = (f"{s.metric} {s.arm or 'base'}" + (f" draw {s.draw}" if s.draw else "")
             + (f" {s.mask_lang}" if s.mask_lang else "") + f" on {s.lang}")
    # the first layers of the study's arms: where later arms can pick up the base model's residual stream
    boundaries = {a for st in ctx.plan.stages.values() if isinstance(st.spec, Mask) for a, _ in st.spec.layers or ()}
    # the prefix store keys recordings by the weights: take their digest before the arm's neurons
    # are zeroed (layers >= start only), so the arm replays the base model's prefix
    with ctx.progress(label, total=None) as advance, reporting(advance), modified, \
            shared_prefix(lm.model, start=start, boundaries=boundaries), _switched_off(ctx, stage, s, lm.model, neurons, zeroed):
        result = run_evaluator(s.metric, lm.model, lm.tokenizer, docs, options, s.lang, s.seed)
    write_json(out / artifacts.RESULT, {**result.to_json(), "deactivated": neurons.count()})


def _switched_off(ctx: Context, stage: Stage, s: Evaluation | LmEvalStage, model: Any, neurons: Any, zero: Any) -> Any:
    """The context that switches the arm's neurons off: `zero` (masks.zeroed or masks.deactivate), or hooks that
    write in their means over `mean_corpus` (mean ablation has no weight-only form)."""
    from neuronspec.models.ablation import mean_ablated

    if s.mean_corpus is None:
        return zero(model, neurons)
    return mean_ablated(model, neurons, load_means(ctx.input(stage, ids.means(s.mean_corpus))))


class LmEvalStage(StageSpec):
    """One lm-eval task on the model under an arm; `task` is its identity (neuronspec.plan.tasks)."""

    seed: int
    lang: str  # the column: a study language, or the task of a language-neutral list
    task: dict[str, Any]
    corpus: str | None  # written per language as the jsonl that data_files: "{corpus}" reads
    batch_size: int
    limit: int | None
    num_fewshot: int | None
    max_length: int | None
    metric_name: str | None
    bootstrap: int
    arm: str | None
    arm_kind: Literal["deactivate", "enhance"] | None
    mask_lang: str | None
    draw: int | None = None  # which draw of a random control with several (its mask is the input)
    random_like: str | None = None  # the arm that control matches
    mean_corpus: str | None = None  # a mean-ablation arm: the corpus of its activation means (None: zeroed)


def evaluate_lm_eval(ctx: Context, stage: Stage, s: LmEvalStage, out: Path) -> None:
    """lm-eval tasks run in one process: under torchrun the stage says so instead of running on one rank
    while the others wait (every other stage is cached by then, so a plain run finishes the study)."""
    from neuronspec import distributed
    from neuronspec.evaluate.harness import run_task
    from neuronspec.models.masks import NeuronSet, deactivate

    if distributed.world().size > 1:
        raise ValueError(f"{stage.id}: lm-eval tasks run in one process, not under torchrun; the other stages are "
                         f"cached: finish with `neuronspec run STUDY --only 'eval/{stage.evaluation}/*'` without torchrun")
    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang) if s.corpus else None
    lm = ctx.model()
    neurons, modified = NeuronSet.empty(), nullcontext()
    if s.arm_kind == "deactivate":  # the arm's mask (of this draw, for a random control with several)
        neurons = load_set(ctx.input(stage, ids.mask(s.arm, s.draw)), artifacts.MASK, s.mask_lang)
        if not neurons:
            _copy_base(ctx, stage, out)
            return
    elif s.arm_kind == "enhance":
        from neuronspec.enhance import Delta, apply_delta

        delta = Delta.load(ctx.input(stage, ids.enhance(s.arm, s.mask_lang)).file(artifacts.DELTA))
        modified = apply_delta(lm.model, delta)
    label = (f"lm-eval {s.task['name']} {s.arm or 'base'}" + (f" draw {s.draw}" if s.draw else "")
             + (f" {s.mask_lang}" if s.mask_lang else ""))
    with ctx.progress(label, total=None), _switched_off(ctx, stage, s, lm.model, neurons, deactivate), modified:
        result = run_task(lm.model, lm.tokenizer, s.task["name"], yaml_path=Path(s.task["yaml"]) if s.task["yaml"] else None,
                          corpus_docs=docs, limit=s.limit, num_fewshot=s.num_fewshot, max_length=s.max_length, metric_name=s.metric_name,
                          batch_size=s.batch_size, bootstrap=s.bootstrap, seed=s.seed)
    write_json(out / artifacts.RESULT, {**result.to_dict(), "kind": "lm_eval", "lang": s.lang, "seed": s.seed, "docs": result.n,
                                     **result.headline().model_dump(mode="json"), "deactivated": neurons.count()})


def _copy_base(ctx: Context, stage: Stage, out: Path) -> None:
    """An empty set switches nothing off, so the arm's model is the base model, bit for bit (tested):
    its result is the base stage's, read instead of recomputed (MWork's sets leave English's empty)."""
    base = next(d for d in stage.deps if ctx.plan.stages[d].kind == stage.kind and ctx.plan.stages[d].spec.arm is None)
    write_json(out / artifacts.RESULT, ctx.input(stage, base).json())
