"""Study loading: every problem located at FILE:LINE:COL, all at once, nothing cached."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from neuronspec.cli import main
from neuronspec.spec import StudyError, load_study
from neuronspec.spec.schema import schema_text

GOOD = """\
name: small
languages: [en, zh, fr]
corpora:
  detect: {source: builtin:bible-passages, split: detect, docs_per_language: 8}
  ppl: {source: builtin:bible-passages, split: eval, docs_per_language: 8}
detect:
  plnd: {sites: [ffn, attn], epsilon: {quantile: 0.99}}
neurons:
  specific: plnd[lang] - plnd[others]
partitions: {early: [0, 2], late: [2, 3]}
arms:
  - {name: early, deactivate: {neurons: specific, layers: early}}
  - {name: early-random, deactivate: {random_like: early}}
evaluate:
  ppl: {metric: perplexity, corpus: ppl}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(path, overrides)
    return [str(p) for p in info.value.problems]


def test_good_study_loads(tmp_path: Path) -> None:
    loaded = load_study(write(tmp_path, GOOD))
    assert loaded.study.detect.plnd.site_list() == ["ffn", "attn.q", "attn.k", "attn.v", "attn.o"]
    assert loaded.study.partitions["early"] == (0, 2)


def test_four_kinds_of_error_reported_together_with_positions(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: bad
        languages: [en, zh, xx]
        seed: lots
        corpora:
          detect: {source: builtin:bible-passages}
        detect:
          plnd:
            epsilon: -0.5
            colour: blue
        """)
    got = problems(path)
    assert f"{path}:2:21: languages.2: unknown language code 'xx'" in got[0]
    assert any(p.startswith(f"{path}:3:1: seed:") and "integer" in p for p in got)
    assert any(p.startswith(f"{path}:8:5: detect.plnd.epsilon:") and "greater than or equal to 0" in p for p in got)
    assert any(p.startswith(f"{path}:9:5: detect.plnd.colour:") and "Extra inputs" in p for p in got)
    assert len(got) == 4


def test_cli_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuronspec.cli import main

    path = write(tmp_path, GOOD.replace("languages: [en, zh, fr]", "languages: [en, zh, fr]\nbogus: 1"))
    assert main(["run", str(path)]) == 2
    assert "bogus: Extra inputs are not permitted" in capsys.readouterr().err
    assert not (tmp_path / ".neuronspec").exists()


def test_reference_errors_point_at_the_referring_field(tmp_path: Path) -> None:
    text = GOOD.replace("neurons: specific, layers: early", "neurons: spesific, layers: middle")
    text = text.replace("plnd[lang] - plnd[others]", "plnd[lang] - plnd[de]")
    got = problems(write(tmp_path, text))
    assert any(":9:3: neurons.specific: [de] is neither a selector" in p for p in got)
    assert any(":12:32: arms.0.deactivate.neurons: no neuron set named 'spesific'" in p for p in got)
    assert any(":12:51: arms.0.deactivate.layers: no partition named 'middle'" in p for p in got)


def test_bad_layer_range_and_quantile(tmp_path: Path) -> None:
    text = GOOD.replace("late: [2, 3]", "late: [3, 2]").replace("quantile: 0.99", "quantile: 1.5")
    got = problems(write(tmp_path, text))
    assert any("partitions.late: layer range [3, 2] must satisfy 0 <= start < end" in p for p in got)
    assert any("detect.plnd.epsilon.quantile: Input should be less than 1" in p for p in got)


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    got = problems(write(tmp_path, "name: x\nlanguages: [en, zh\n"))
    assert got[0].startswith(f"{tmp_path / 'study.yaml'}:3:") and "YAML syntax" in got[0]


def test_overrides_apply_before_validation_and_are_named_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    loaded = load_study(path, ["detect.plnd.epsilon.quantile=0.95", "arms.0.deactivate.layers=late"])
    assert loaded.study.detect.plnd.epsilon.quantile == 0.95
    assert loaded.study.arms[0].deactivate.layers == "late"
    got = problems(path, ("seed=abc",))
    assert got == ["--set seed=abc: seed: Input should be a valid integer, unable to parse string as an integer"]


def test_extends_merges_and_errors_point_into_the_right_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\ndetect:\n  plnd: {epsilon: 0.25}\n", "child.yaml")
    loaded = load_study(child)
    assert loaded.study.name == "child"
    assert loaded.study.detect.plnd.epsilon == 0.25
    assert loaded.study.detect.plnd.sites == ["ffn", "attn"]  # kept from the base
    write(tmp_path, GOOD.replace("seed", "x").replace("languages: [en, zh, fr]", "languages: [en, zh, fr]\nseed: many"), "base.yaml")
    got = problems(child)
    assert got[0].startswith(f"{tmp_path / 'base.yaml'}:3:1: seed:")


def test_an_unknown_language_code_names_its_place_and_the_codes_meant(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: s
        languages: [en, fra, german, zn]
        report:
          baseline_language: ge
        """)
    got = problems(path)
    assert got[0].startswith(f"{path}:2:17: languages.1: unknown language code 'fra'; did you mean fr (French)?")
    assert got[1].startswith(f"{path}:2:22: languages.2: unknown language code 'german'; did you mean de (German)?")
    assert got[2].startswith(f"{path}:2:30: languages.3:") and "zh (Chinese)" in got[2]
    assert got[3].startswith(f"{path}:4:3: report.baseline_language:") and "de (German), ka (Georgian)" in got[3]
    assert main(["validate", str(path)]) == 2


def test_committed_schema_is_current() -> None:
    committed = Path(__file__).parents[2] / "schemas" / "study.schema.json"
    assert committed.read_text() == schema_text(), "schemas/study.schema.json is stale: run `neuronspec schema`"
    assert json.loads(committed.read_text())["title"] == "neuronspec study"
    shipped = Path(__file__).parents[2] / "neuronspec" / "schemas" / "study.schema.json"  # package data: in the wheel
    assert shipped.read_bytes() == committed.read_bytes(), (
        "neuronspec/schemas/study.schema.json differs: run `neuronspec schema --out neuronspec/schemas/study.schema.json`")


def test_the_wheel_ships_the_schema() -> None:
    import tomllib

    from neuronspec.spec.starter import INSTALLED_SCHEMA

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["neuronspec"]
    assert any(INSTALLED_SCHEMA.relative_to(INSTALLED_SCHEMA.parents[1]).match(p) for p in patterns)


def test_shipped_studies_validate_and_carry_the_schema_modeline() -> None:
    studies = sorted((Path(__file__).parents[2] / "studies").glob("*.yaml"))
    assert studies, "no studies shipped"
    for path in studies:
        assert path.read_text().startswith("# yaml-language-server: $schema=../schemas/study.schema.json"), path
        load_study(path)


# -- one pass, one message per mistake ----------------------------------------------------
_ONE_PASS = """\
name: s
model: {id: gpt2}
languages: [en, fr]
corpora:
  detect: {source: c.jsonl}
detect:
  plnd: {epsilon: {quantile: 0.9}}
neurons:
  specific: plnd[lang] - plnd[otters]
arms:
  - {name: off, deactivate: {neurons: specific}}
evaluate:
  ppl: {metric: perplexity, corpus: detect, bootstrap: -3}
"""


def _problems(text: str, *sets: str) -> list[str]:
    with pytest.raises(StudyError) as err:
        load_study(text=text, name="s.yaml", overrides=list(sets))
    return [str(p) for p in err.value.problems]


def test_validate_reports_schema_and_reference_problems_in_one_pass() -> None:
    """A bad bootstrap (schema) and a set naming a language that does not exist (a reference,
    only checkable on a validated study) are both reported by one `validate`, each located."""
    problems = _problems(_ONE_PASS)
    assert problems == [
        "s.yaml:13:45: evaluate.ppl.bootstrap: Input should be greater than or equal to 0",
        "s.yaml:9:3: neurons.specific: [otters] is neither a selector (lang, all, any, others) nor one of the study's languages",
    ], problems


def test_a_value_that_fits_no_union_member_is_one_message() -> None:
    """ε is a number, {quantile: q} or one of those per site: a bad quantile was reported three
    times (one per member); it is one message, from the member the value was written for."""
    ok = _ONE_PASS.replace("otters", "others").replace("bootstrap: -3", "bootstrap: 3")
    assert _problems(ok, "detect.plnd.epsilon.quantile=1.5") == [
        "--set detect.plnd.epsilon.quantile=1.5: detect.plnd.epsilon.quantile: Input should be less than 1"]
    assert _problems(ok.replace("{quantile: 0.9}", "{ffn: 2, attn.x: 3}")) == [
        "s.yaml:7:28: detect.plnd.epsilon.attn.x: Input should be 'ffn', 'attn.q', 'attn.k', 'attn.v' or 'attn.o'"]
    assert _problems(ok.replace("{quantile: 0.9}", "-1")) == [
        "s.yaml:7:10: detect.plnd.epsilon: Input should be greater than or equal to 0"]
