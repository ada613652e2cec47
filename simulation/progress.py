"""Console output of the workbench commands: results on stdout, progress bars on stderr."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def emit(result: dict[str, object], json_output: bool) -> None:
    """A command's result: one JSON line (`--json`, what benchmarks print) or aligned text."""
    if json_output:
        print(json.dumps(result), flush=True)
        return
    for key, value in result.items():
        print(f"{key:>24}: {value}", flush=True)


@contextlib.contextmanager
def bar(description: str, total: int, *, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar; yields ``advance(n)``. ``quiet`` shows nothing (for --json)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
