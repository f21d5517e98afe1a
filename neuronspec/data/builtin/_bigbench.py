"""Reading BIG-bench task files straight from the `bigbench` 1.0.0 source archive.

PyPI no longer serves that version (only 0.0.1, without task files), so the corpora built on
it (wikilingua, multiemo, wiki) work only from a copy of the archive (`--from FILE`); no
shipped study uses them.

The sdist (≈360 MB, Apache-2.0 code; each task's data under its own terms) holds every task
as `bigbench/benchmark_tasks/<task>/task.json`. It is read in one pass, never installed
(installing pulls TensorFlow-era dependencies and gains nothing).
"""

from __future__ import annotations

import json
from typing import Any

from neuronspec.data.packages import Archive, Package

PACKAGE = Package(
    "pypi", "bigbench", "1.0.0", sdist=True, sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    withdrawn="since 2026-12 PyPI serves only bigbench 0.0.1, code without the task files",
)
TASKS_ROOT = "bigbench/benchmark_tasks/"


def read_tasks(archive: Archive, tasks: list[str]) -> dict[str, dict[str, Any]]:
    """The parsed `task.json` of each task path (e.g. `gem/wikilingua_multilingual`)."""
    wanted = {f"{TASKS_ROOT}{t}/task.json": t for t in tasks}

    def match(name: str) -> str | None:
        for suffix, task in wanted.items():
            if name == suffix or name.endswith("/" + suffix):
                return task
        return None

    found = {match(name): json.loads(data) for name, data in archive.iter_files(lambda n: match(n) is not None)}
    missing = [t for t in tasks if t not in found]
    if missing:
        raise ValueError(f"task files not found in the bigbench archive: {', '.join(missing)}")
    return found  # type: ignore[return-value]
