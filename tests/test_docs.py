"""The project's documentation: the README stays a newcomer's page, every link inside the
repository resolves, nothing points outside it, and the generated references match the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from neuronspec.cli_reference import cli_reference
from neuronspec.spec.reference import UNDESCRIBED, study_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = ("../shared", "DESIGN.md")


def _tracked() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # relative ones only


def test_readme_is_a_newcomers_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the reference material belongs in docs/"


def test_docs_exist_for_every_topic() -> None:
    names = {p.name for p in DOCS}
    assert {"methods.md", "study.md", "cli.md", "api.md", "benchmarks.md"} <= names, names


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or ROOT not in resolved.parents:
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{path.name}: links that do not resolve inside the repository: {broken}"


def _anchors(path: Path) -> set[str]:
    """GitHub's (and mkdocs' toc) heading ids: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    heads = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_nothing_points_outside_the_repository() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {needle}" for p in _tracked() if p.suffix in {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg"}
                 and p != Path(__file__).resolve()
                 for needle in OUTSIDE if needle in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, offenders


def test_study_reference_is_current() -> None:
    committed = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    assert committed == study_reference().markdown, "docs/study.md is stale: run `neuronspec schema --markdown`"


def test_cli_reference_is_current() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == cli_reference(), "docs/cli.md is stale: run `python -m neuronspec.cli_reference`"


def test_study_reference_lists_every_field_and_marks_the_undescribed() -> None:
    # independent of the renderer: walk the Pydantic models themselves
    from pydantic import BaseModel

    from neuronspec.spec.models import Study

    seen: set[type[BaseModel]] = set()
    expected, undescribed = 0, 0

    def walk(model: type[BaseModel]) -> None:
        nonlocal expected, undescribed
        if model in seen:
            return
        seen.add(model)
        for info in model.model_fields.values():
            expected += 1
            undescribed += not info.description
            for arg in _classes(info.annotation):
                walk(arg)

    walk(Study)
    ref = study_reference()
    assert ref.fields == expected + 1  # + `extends`, which the loader handles before validation
    assert len(ref.undescribed) == undescribed
    assert ref.markdown.count(UNDESCRIBED) == undescribed


def _classes(annotation: object) -> list[type]:
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for a in get_args(annotation) for c in _classes(a)]


def test_schema_command_writes_the_study_reference(tmp_path: Path) -> None:
    from neuronspec.cli import main

    out = tmp_path / "study.md"
    assert main(["schema", "--markdown", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (ROOT / "docs" / "study.md").read_text(encoding="utf-8")


def test_api_reference_names_every_public_name() -> None:
    from dataclasses import fields

    import neuronspec as ns
    from neuronspec.api import Results, Study

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    public = [f"ns.{n}" for n in ns.__all__]
    for cls in (Study, Results):  # methods and properties (a Study's fields are how it was opened)
        skip = {f.name for f in fields(cls)} if cls is Study else set()
        public += [f".{n}" for n in vars(cls) if not n.startswith("_") and n not in skip]
    public += [f".{f.name}" for f in fields(Results)]  # what a run's results hold
    missing = [n for n in public if n not in text]
    assert not missing, f"docs/api.md does not mention {missing}"
