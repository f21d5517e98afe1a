"""A progress callback that deep library code can report to without threading it through every signature.

The runner opens a bar for a stage and installs its `advance(n, tokens=0)` with `reporting`;
batch loops (e.g. `evaluate.logprobs.token_logprobs`) call `advance` after each batch. Nothing
is reported outside a `reporting` block, so library users see no difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[..., None] | None] = ContextVar("neuronspec_progress", default=None)


@contextmanager
def reporting(callback: Callable[..., None]) -> Iterator[None]:
    token = _hook.set(callback)
    try:
        yield
    finally:
        _hook.reset(token)


def advance(n: int = 1, tokens: int = 0) -> None:
    """Report n finished items holding `tokens` real tokens to the installed callback, if any."""
    hook = _hook.get()
    if hook is not None:
        hook(n, tokens=tokens)
