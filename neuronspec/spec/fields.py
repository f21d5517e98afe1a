"""The field types every part of a study shares: names safe in file names, language codes,
thresholds, site names and batching. Kept apart from the study's sections so each of those
modules reads them from one place."""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from neuronspec.data.languages import LANGUAGES


#: Names of studies, arms and models: safe in file names, stage ids and run ids.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX = 64
#: Bootstrap resamples are held in memory per cell: 1e9 died with MemoryError at run time.
MAX_BOOTSTRAP = 100_000
ModelName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]
#: Names of neuron sets, evaluations, corpora and partitions. They become file names
#: (`{set}.{lang}.safetensors`, `{evaluation}-….png`), so no separators and no dots: a dot
#: would let a set `fam.en` collide with language `en` of a family set `fam`.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=NAME_MAX)]

SITES = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")
Site = Literal["ffn", "attn.q", "attn.k", "attn.v", "attn.o"]
#: `attn` and `all` are shorthands accepted wherever a list of sites is.
SITE_GROUPS: dict[str, tuple[str, ...]] = {"attn": SITES[1:], "all": SITES}


class Strict(BaseModel):
    # inf and NaN are never a meaningful setting (`lr: .inf` used to give "+nan" cells and exit 0)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_language(code: str) -> str:
    if code not in LANGUAGES:
        close = close_languages(code)
        hint = ("did you mean " + ", ".join(f"{c} ({LANGUAGES[c].name})" for c in close) + "?") if close else \
            "use an ISO 639-1 code such as en, zh, fr, hi"
        raise ValueError(f"unknown language code {code!r}; {hint}")
    return code


def close_languages(given: str, n: int = 3) -> list[str]:
    """Known codes a mistyped one probably meant: a 3-letter code's first two letters (fra → fr),
    a language's name or its start (german, ge → de),
    else a code one letter off (zn → zh)."""
    text = given.strip().lower()
    found = [c for c in LANGUAGES if len(text) == 3 and text[:2] == c]
    found += [c for c, lang in LANGUAGES.items() if len(text) >= 2 and lang.name.lower().startswith(text)]
    return list(dict.fromkeys(found or difflib.get_close_matches(text, LANGUAGES, n=n, cutoff=0.5)))[:n]


LanguageCode = Annotated[str, AfterValidator(_check_language)]


def _unique(values: list[Any]) -> list[Any]:
    repeated = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    return values


#: A list of languages names each once: a language listed twice would be read, detected and
#: evaluated twice (a duplicate stage) or counted twice.
Languages = Annotated[list[LanguageCode], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})]


def _check_range(value: tuple[int, int]) -> tuple[int, int]:
    start, end = value
    if start < 0 or end <= start:
        raise ValueError(f"layer range [{start}, {end}] must satisfy 0 <= start < end")
    return value


LayerRange = Annotated[tuple[int, int], AfterValidator(_check_range)]


def expand_sites(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for site in SITE_GROUPS.get(name, (name,)):
            if site not in out:
                out.append(site)
    return out


class Quantile(Strict):
    quantile: float = Field(gt=0, lt=1, description="ε is this quantile of the per-neuron minima over documents (min over c of Imp), pooled over "
                                                      "languages, layers and neurons of a site.")


# ε = .inf is meaningful (select nothing: the empty-set path); NaN still fails `ge=0`.
Threshold = Annotated[Union[Annotated[float, Field(ge=0, allow_inf_nan=True)], Quantile], Field(union_mode="left_to_right")]


#: a per-layer top-k: a count (an integer ≥ 1) or a fraction of the layer's width (a float in (0, 1))
TopK = Annotated[Union[Annotated[int, Field(ge=1, strict=True)], Annotated[float, Field(gt=0, lt=1)]],
                 Field(union_mode="left_to_right")]


class Batching(Strict):
    """How documents are grouped into forward passes (length-sorted, so padding stays small)."""

    batch_size: int = Field(8, gt=0, description="Documents per forward pass (at most).")
    batch_tokens: int | None = Field(
        None, gt=0, description="Token budget per forward pass, padding included (documents × longest ≤ budget): "
                                "long documents go in small batches, short ones in large.")

    def batching(self) -> dict[str, int]:
        """For a stage's spec: batch_tokens only when set, so studies without it keep their cache keys."""
        return {"batch_size": self.batch_size, **({"batch_tokens": self.batch_tokens} if self.batch_tokens else {})}
