"""Progress bars with rate and ETA for long work at the bench (flashing), on a terminal;
one line per finished file otherwise (logs, CI)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gateway.provision import FlashProgress


@contextmanager
def flash_progress(console: Console | None = None) -> Iterator[Callable[[FlashProgress], None]]:
    """A callback for provision.flash(progress=...): a bar (bytes, rate, ETA) on a terminal."""
    console = console or Console(file=sys.stdout)
    if not console.is_terminal:
        def plain(update: FlashProgress) -> None:
            if update.file_finished:
                print(update, flush=True)
        yield plain
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("flashing", total=None)

        def update_bar(update: FlashProgress) -> None:
            progress.update(task, total=update.bytes_total, completed=update.bytes_done,
                            description=f"[{update.files_done}/{update.files_total}] "
                                        f"{update.path[-28:]:<28}")
        yield update_bar
