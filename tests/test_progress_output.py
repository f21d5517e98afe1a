"""Third-party output when stderr is not a terminal: held back, and handed over on failure."""

from __future__ import annotations

import sys

import pytest
from tqdm import tqdm

from neuronspec.progress import third_party_output


def test_bars_are_held_back_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with third_party_output():
        for _ in tqdm(range(50), desc="Running loglikelihood requests"):
            pass
        print("a library's note", file=sys.stderr)
    assert capsys.readouterr().err == ""


def test_what_was_held_back_travels_with_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError) as err, third_party_output():
        print("dataset builder said: file is not JSON", file=sys.stderr)
        raise RuntimeError("task failed")
    assert any("file is not JSON" in note for note in err.value.__notes__)
    assert capsys.readouterr().err == ""


def test_a_terminal_sees_everything(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with third_party_output():
        print("bar", file=sys.stderr)
    assert capsys.readouterr().err == "bar\n"
