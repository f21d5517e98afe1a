"""Stage kinds: what each kind of stage computes, from what, and with which code.

A kind is one typed object (`Kind`):

* **spec** — a frozen Pydantic model (a `StageSpec`) of everything the result depends on.
  `plan/compile.py` builds it from the study; the stage key hashes its canonical JSON (with
  the input keys, the model identity and the code fingerprint), so two stages with equal
  specs share one result. Fields that do not change the result (batching of a selection,
  an arm's name) stay out of it; facts about a stage's place in the study (its language,
  arm, evaluation) are typed fields of the `Stage`, not parsed from its id.
* **compute** — `compute(ctx, stage, spec, out)`: reads its inputs from the store (already
  verified) through `ctx.input`, and writes its files into the empty folder `out`. Small
  results go in `result.json` (the report reads only JSON, so rendering needs no torch);
  tensors in safetensors files. Import heavy modules inside the function.
* **code fingerprint** — computed, never kept by hand (`neuronspec.plan.fingerprint`): the
  compute function, its spec class, the helpers of this module they call and every
  neuronspec module they import, transitively. Comments, whitespace and docstrings do not
  count; any other edit recomputes the kind's stages and `plan` says which file changed.
  A module the code reaches without an import statement (dispatch by name) must be listed
  in `Kind.modules`.

One module per family (its specs and compute functions), `base` for what they share,
`artifacts` for the names of the files they write, and this registry.

To add a kind: write its spec class and compute function in its family's module, register
`KINDS["my.kind"] = Kind(MySpec, my_compute, "what it does", ...)` below, and add its stages in
`plan/compile.py` with `Stage(ids.my_stage(...), "my.kind", MySpec(...), deps=...)`. A stage that reads
only some files of an input (one language's documents) names them in `reads=`: early cutoff
(neuronspec.plan.content) then ignores changes to the others, and reading an undeclared file raises.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from neuronspec.plan.fingerprint import Fingerprint, fingerprints
from neuronspec.plan.kinds.activations import (ActMeans, ActStats, LapeSelect, LinguaFrancaSelect, act_means, select_lape,
                                               select_linguafranca, stats_act)
from neuronspec.plan.kinds.base import Batched, Context, Kind, StageSpec, load_set, read_docs
from neuronspec.plan.kinds.corpus import CorpusStage, corpus
from neuronspec.plan.kinds.enhance import Enhance, Settings, enhance
from neuronspec.plan.kinds.evaluate import Evaluation, LmEvalStage, evaluate, evaluate_lm_eval
from neuronspec.plan.kinds.logit_lens import LogitLens, logit_lens
from neuronspec.plan.kinds.plnd import PlndSelect, PlndStats, select_plnd, stats_plnd
from neuronspec.plan.kinds.sets import ImportedSet, Mask, ModelDims, SetFileRef, Sets, mask, sets
from neuronspec.plan.kinds.sharing import SharingAttribution, SharingSelect, attr_sharing, select_sharing

__all__ = ["EVAL_KINDS", "KINDS", "ActMeans", "ActStats", "Batched", "Context", "CorpusStage", "Enhance", "Evaluation", "Kind",
           "ImportedSet", "LapeSelect", "LinguaFrancaSelect", "LmEvalStage", "LogitLens", "Mask", "ModelDims", "PlndSelect", "PlndStats",
           "SetFileRef", "Sets", "Settings", "SharingAttribution", "SharingSelect", "StageSpec", "code_fingerprints", "load_set",
           "read_docs", "spec_types"]

#: kinds whose results are evaluation cells (rows = arms, columns = languages) in reports and diffs
EVAL_KINDS = ("eval", "eval.lm_eval")

KINDS: dict[str, Kind] = {
    "corpus": Kind(CorpusStage, corpus, "materialise and sample documents"),
    "stats.plnd": Kind(PlndStats, stats_plnd, "PLND importance statistics (one forward pass)", loads_model=True,
                       data_parallel=True),
    "select.plnd": Kind(PlndSelect, select_plnd, "threshold ε → language-relevant neurons"),
    "stats.act": Kind(ActStats, stats_act, "activation statistics (one forward pass)", loads_model=True, data_parallel=True),
    "select.lape": Kind(LapeSelect, select_lape, "LAPE language-specific neurons"),
    "select.linguafranca": Kind(LinguaFrancaSelect, select_linguafranca,
                                "LinguaFranca similarity, LRDS/SADS, key linguistic regions"),
    "select.sharing": Kind(SharingSelect, select_sharing, "Sharing Matters neuron categories"),
    "attr.sharing": Kind(SharingAttribution, attr_sharing,
                         "attribution of the output to ffn neurons (Integrated Gradients or |a|·‖W_down‖)",
                         loads_model=True, data_parallel=False),
    "logit_lens": Kind(LogitLens, logit_lens, "logit lens: language of each layer's top tokens", loads_model=True),
    "means": Kind(ActMeans, act_means, "activation means over a corpus (one forward pass; mean-ablation arms)",
                  loads_model=True),
    "sets": Kind(Sets, sets, "named neuron sets (set algebra)"),
    "mask": Kind(Mask, mask, "an arm's neurons per language"),
    "enhance": Kind(Enhance, enhance, "fine-tune only an arm's neurons → a delta", loads_model=True),
    "eval": Kind(Evaluation, evaluate, "evaluate the model (arm deactivated)", loads_model=True, data_parallel=True),
    "eval.lm_eval": Kind(LmEvalStage, evaluate_lm_eval, "an lm-evaluation-harness task on the model (arm applied)",
                         loads_model=True),
}


def code_fingerprints(kinds: Iterable[str] | None = None, root: Path | None = None) -> dict[str, Fingerprint]:
    """The code fingerprint of each kind (all by default), read from the source under `root`."""
    names = list(KINDS) if kinds is None else list(kinds)
    return fingerprints({k: KINDS[k].code for k in names}, root)


def spec_types() -> dict[str, type[StageSpec]]:
    """kind → the spec class its stages carry (what `Plan.add` checks)."""
    return {name: kind.spec for name, kind in KINDS.items()}
