"""Language fidelity with real lingua detection (offline)."""

from __future__ import annotations

import sys

import pytest

from neuronspec.evaluate.fidelity import detect, detector, fidelity

pytest.importorskip("lingua")

LANGS = ["en", "fr", "zh"]
ENGLISH = "The weather is lovely today, so we are going for a walk in the park."
FRENCH = "Il fait très beau aujourd'hui, alors nous allons nous promener dans le parc."
CHINESE = "今天天气很好，所以我们去公园散步。"


def test_detects_fixed_sentences() -> None:
    assert detect([ENGLISH, FRENCH, CHINESE, "", "   "], LANGS) == ["en", "fr", "zh", None, None]


def test_fidelity_share_and_empty_outputs() -> None:
    outputs = [ENGLISH, FRENCH, CHINESE, ""]
    assert fidelity(outputs, "en", LANGS) == pytest.approx(1 / 4)  # empty counts as not faithful
    assert fidelity(outputs, "zh", LANGS) == pytest.approx(1 / 4)
    assert fidelity([FRENCH, FRENCH], "fr", LANGS) == 1.0


def test_detector_is_cached_and_errors_are_clear() -> None:
    assert detector(["zh", "en", "fr"]) is detector(["fr", "EN", "zh"])
    with pytest.raises(ValueError, match="cannot identify language 'xx'"):
        detector(["en", "xx"])
    with pytest.raises(ValueError, match="at least two"):
        detector(["en"])


def test_missing_lingua_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lingua", None)  # makes `import lingua` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'neuronspec\[generation\]'"):
        detector(["en", "de", "it"])
