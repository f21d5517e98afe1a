"""An ε that empties every set is reported as such: no diagonal wins, no overlap of empty sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronspec.cli import main


def test_infinite_epsilon_reports_empty_sets(study_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["run", "--json", str(study_file), "--set", "detect.plnd.epsilon=.inf"]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)["results"]
    specific = results["sets"]["specific"]
    assert specific["empty"] == ["en", "fr", "de"]
    assert all(v is None for row in specific["jaccard"].values() for v in row.values())
    matrix = results["evaluations"]["ppl"]["matrices"]["early"]
    assert matrix["empty_rows"] == ["en", "fr", "de"]
    assert matrix["diagonal_largest"] == 0 and matrix["rows_with_diagonal"] == 0
    assert "neuron set 'specific' is EMPTY for en, fr, de" in out.err

    # `latest` of the study as it is now would be another run: name the --set it was made with
    assert main(["report", "latest", "--study", str(study_file), "-q"]) == 2
    assert main(["report", "latest", "--study", str(study_file), "--set", "detect.plnd.epsilon=.inf", "-q"]) == 0
    html = next((study_file.parent / ".neuronspec" / "runs").glob("*/report.html")).read_text(encoding="utf-8")
    assert "the set is EMPTY for en, fr, de" in html and "specific is EMPTY for en, fr, de" in html
    jaccard = html.split("overlap (Jaccard) of specific")[1].split("</table>")[0]
    assert "1.00" not in jaccard and "–" in jaccard
