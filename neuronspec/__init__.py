"""neuronspec: declarative, cached studies of language-specific neurons in LLMs.

The Python API (docs/api.md):

    import neuronspec as ns
    study = ns.open_study("studies/quickstart.yaml", {"corpora.ppl.docs_per_language": 4})
    results = study.run()                       # the same cached stages as `neuronspec run`
    results.evaluations                         # a tidy pandas DataFrame
    with ns.deactivate(model, results.neuron_set("specific", "zh")):
        ...                                     # your own Hugging Face model, zh neurons off

Names are imported on first use (PEP 562): `import neuronspec` (and the command line on a
fully cached run) never pays for torch, transformers, pandas or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neuronspec.api import Results, RunFailed, Study, open_study
    from neuronspec.models.masks import NeuronSet, deactivate, zero_weights
    from neuronspec.spec.errors import StudyError

_EXPORTS = {
    "open_study": "neuronspec.api",
    "Study": "neuronspec.api",
    "Results": "neuronspec.api",
    "RunFailed": "neuronspec.api",
    "NeuronSet": "neuronspec.models.masks",
    "deactivate": "neuronspec.models.masks",
    "zero_weights": "neuronspec.models.masks",
    "StudyError": "neuronspec.spec.errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NeuronSet", "Results", "RunFailed", "Study", "StudyError", "deactivate", "open_study", "zero_weights"]
