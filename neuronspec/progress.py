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


@contextmanager
def third_party_output() -> Iterator[None]:
    """Hold back what libraries write to stderr (lm-eval's and datasets' tqdm bars) when stderr is
    not a terminal: a run logged to a file keeps neuronspec's own lines, not hundreds of bar
    redraws. Nothing is lost on failure: the held text is attached to the exception as a note.
    On a terminal (or a notebook) this does nothing."""
    import io
    import sys
    from contextlib import redirect_stderr

    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)() or "ipykernel" in sys.modules:
        yield
        return
    held = io.StringIO()
    try:
        with redirect_stderr(held):
            yield
    except BaseException as exc:
        text = held.getvalue().strip()
        if text:
            exc.add_note("what the library wrote before failing:\n" + text[-4000:])
        raise
