"""Study errors that point at `FILE:LINE:COL`.

Every problem found in a study — YAML syntax, a field Pydantic rejects, a reference to
a set that does not exist, a partition past the model's last layer — becomes a
`Problem` with a location, so the user can jump straight to it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    override: str | None = None  # the `--set` that produced this value, if any

    def __str__(self) -> str:
        if self.override is not None:
            return f"--set {self.override}"
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    location: Location
    path: str  # dotted field path, e.g. detect.plnd.epsilon
    message: str

    def __str__(self) -> str:
        field = f"{self.path}: " if self.path else ""
        return f"{self.location}: {field}{self.message}"


class StudyError(Exception):
    """One or more problems with a study; `str()` lists them all, one per line."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
