"""A small rich progress bar shared by long-running steps (items/s shown)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, unit: str = "prompts") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows ``label``, a bar, ``n/total`` and ``unit``/s on stderr."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Rate(TextColumn):
        def render(self, task):  # noqa: D102
            speed = task.finished_speed or task.speed
            return f"{speed:.1f} {unit}/s" if speed else f"… {unit}/s"

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _Rate(""), TimeElapsedColumn(), console=Console(stderr=True), transient=False)
    with prog:
        task = prog.add_task(label, total=total)
        yield lambda n=1: prog.advance(task, n)
