"""The names of the files a stage writes into its store entry: one place, read by the kinds that
write them and by whoever reads an entry (reports, diffs, the Python API, `export`)."""

from __future__ import annotations

RESULT = "result.json"  # every stage: its small JSON summary (all the report reads)
STATS = "stats.safetensors"  # stats.plnd
ACTIVATIONS = "activations.safetensors"  # stats.act
ATTRIBUTIONS = "attributions.safetensors"  # attr.sharing
DELTA = "delta.safetensors"  # enhance
MEANS = "means.safetensors"  # means (a mean-ablation arm's values)
MASK = "mask"  # the set name of an arm's neurons (mask stages)


def docs_file(lang: str) -> str:
    """A corpus stage's documents of one language."""
    return f"{lang}.json"


def set_file(name: str, lang: str | None = None) -> str:
    """A neuron set: one per language for a family (`NAME.LANG.safetensors`), else `NAME.safetensors`."""
    return f"{name}.{lang}.safetensors" if lang else f"{name}.safetensors"


def half_set_file(name: str, half: int, lang: str | None = None) -> str:
    """A detector's set found on one half of the documents (split-half stability): `NAME~halfH[.LANG].safetensors`."""
    return set_file(f"{name}~half{half}", lang)
