"""What every `neuronspec` command shares: the two consoles, escaping, the failure line, and how
a command finds its study and store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape

from neuronspec.paths import study_store
from neuronspec.spec import load_study

console = Console(stderr=False, highlight=False)
err = Console(stderr=True, highlight=False)


def _esc(value: object) -> str:
    """User-controlled text (values, paths, names) made literal for rich markup."""
    return escape(str(value))


def _fail(message: object) -> None:
    """An error line on stderr, in red, printed literally (it may quote the study)."""
    err.print(str(message), style="red", markup=False, soft_wrap=True)


def _store(args: argparse.Namespace, study_path: Path | None):  # noqa: ANN202
    from neuronspec.plan.store import Store

    return Store(study_store(study_path, getattr(args, "store", None)))


def _load(args: argparse.Namespace, path: str):  # noqa: ANN202
    return load_study(path, getattr(args, "set", None) or [])


def _compile(loaded):  # noqa: ANN001, ANN202
    from neuronspec.plan.compile import compile_study

    return compile_study(loaded)


def _print_tables(tables: list[Any]) -> None:
    """Rich tables; one with more columns than the terminal fits is split into several that fit."""
    for table in tables:
        for part in table.split(console.width):
            console.print(part.to_rich())


def _run_study(loaded: Any, plan: Any, store: Any, *, started: float, force: Sequence[str] = (), only: Sequence[str] = (),
               quiet: bool = False, git_info: Any = True, note: str | None = None) -> Any:
    from neuronspec.session import run_study

    return run_study(loaded, plan, store, started=started, force=force, only=only, quiet=quiet, git_info=git_info,
                     console=err, note=note)
