"""`models:` — one study over several models: validation, errors with positions, variants."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from neuronspec.spec import Study, StudyError, load_study

MULTI = """\
name: dyn
models:
  big: {id: gemma-3-270m}
  small: {id: smollm2-135m, dtype: bfloat16}
languages: [en, zh]
corpora:
  parallel: {source: "builtin:bible", docs_per_language: 8}
detect:
  linguafranca: {corpus: parallel, z_threshold: 0.5}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(path)
    return [str(p) for p in info.value.problems]


def test_variants_are_single_model_studies_named_after_their_model(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, MULTI)).study
    variants = study.variants()
    assert list(variants) == ["big", "small"]
    small = variants["small"]
    assert small.name == "dyn@small" and small.model.id == "smollm2-135m" and small.model.dtype == "bfloat16"
    assert small.models == {} and small.variants() == {None: small}
    assert small.detect == study.detect and small.languages == study.languages
    one = load_study(write(tmp_path, MULTI.replace("models:\n  big: {id: gemma-3-270m}\n  small: {id: smollm2-135m, dtype: bfloat16}",
                                                   "model: {id: smollm2-135m}"), "one.yaml")).study
    assert one.variants() == {None: one}


def test_a_multi_model_study_dumps_and_validates_again(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, MULTI)).study
    data = study.model_dump(mode="json")
    assert "model" not in data  # the unused default would clash with `models`
    assert Study.model_validate(data) == study


def test_model_and_models_together_is_an_error_at_the_model_field(tmp_path: Path) -> None:
    path = write(tmp_path, MULTI.replace("languages:", "model: {id: gemma-3-270m}\nlanguages:"))
    got = problems(path)
    assert len(got) == 1
    assert got[0].startswith(f"{path}:5:1: model: give either `model` (one model) or `models` (several, by name: big, small)")


def test_model_names_are_checked_where_they_are_written(tmp_path: Path) -> None:
    got = problems(write(tmp_path, MULTI.replace("  small:", "  'small one':")))
    assert len(got) == 1 and got[0].startswith(f"{tmp_path / 'study.yaml'}:4:3: models.small one:") and "pattern" in got[0]
    got = problems(write(tmp_path, MULTI.replace("dtype: bfloat16", "dtype: int3")))
    assert got[0].startswith(f"{tmp_path / 'study.yaml'}:4:29: models.small.dtype:")


def test_extending_a_one_model_study_with_models_replaces_its_model(tmp_path: Path) -> None:
    base = MULTI.replace("models:\n  big: {id: gemma-3-270m}\n  small: {id: smollm2-135m, dtype: bfloat16}", "model: {id: gemma-3-270m}")
    write(tmp_path, base, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: across\nmodels:\n  a: {id: gemma-3-270m}\n  b: {id: smollm2-135m}\n", "child.yaml")
    study = load_study(child).study
    assert list(study.variants()) == ["a", "b"] and "model" not in study.model_fields_set
    back = write(tmp_path, "extends: child.yaml\nname: one-again\nmodel: {id: smollm2-135m}\n", "back.yaml")
    assert load_study(back).study.variants()[None].model.id == "smollm2-135m"
