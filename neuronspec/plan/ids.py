"""Stage ids: the one place their formats are written.

A stage id names a stage in plans, the store's index, run records, `--only`/`--force`
patterns and diffs, so its shape is part of the interface: `corpus/NAME`, `stats/plnd/LANG`,
`select/DETECTOR`, `means/CORPUS`, `sets`, `mask/ARM[/drawK]`, `enhance/ARM/LANG`,
`eval/EVALUATION/(base|ARM[/drawK])/[MASK_LANG@]LANG`, and `MODEL:ID` in a study with
several models. Code builds ids through these functions and reads a stage's place from the
`Stage` (lang, arm, draw, evaluation), never by parsing the id.
"""

from __future__ import annotations

SETS = "sets"


def corpus(name: str) -> str:
    return f"corpus/{name}"


def stats_plnd(lang: str) -> str:
    return f"stats/plnd/{lang}"


def stats_act(corpus_name: str, lang: str) -> str:
    return f"stats/act/{corpus_name}/{lang}"


def means(corpus_name: str) -> str:
    """Activation means over a corpus: what a mean-ablation arm writes in."""
    return f"means/{corpus_name}"


def select(detector: str) -> str:
    return f"select/{detector}"


def attr_sharing(lang: str) -> str:
    return f"attr/sharing/{lang}"


def logit_lens(lang: str) -> str:
    return f"analysis/logit_lens/{lang}"


def mask(arm: str, draw: int | None = None) -> str:
    """The mask stage of an arm (of one draw of a random control with several draws)."""
    return f"mask/{arm}" if draw is None else f"mask/{arm}/draw{draw}"


def enhance(arm: str, lang: str) -> str:
    return f"enhance/{arm}/{lang}"


def evaluation(name: str, arm: str | None, lang: str, *, draw: int | None = None, mask_lang: str | None = None) -> str:
    """An evaluation stage: the untouched model (`arm` None), or an arm (one draw, one deactivated language) on `lang`."""
    if arm is None:
        return f"eval/{name}/base/{lang}"
    return f"eval/{name}/{arm}/" + (f"draw{draw}/" if draw else "") + (f"{mask_lang}@{lang}" if mask_lang else lang)


def qualified(model: str | None, sid: str) -> str:
    """`MODEL:ID` in a study with several models; the id itself in a one-model study."""
    return sid if model is None else f"{model}:{sid}"


def unqualified(sid: str) -> tuple[str | None, str]:
    """(model, id) of a possibly model-qualified id."""
    model, sep, rest = sid.partition(":")
    return (model, rest) if sep else (None, sid)
