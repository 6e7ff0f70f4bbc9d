"""How a job's progress looks on the console (`orchestrator.jobs.progress` feeds it): a live bar in
a terminal, one plain line per step anywhere else."""
from __future__ import annotations

import sys
import time

from rich.console import Console


class PlainProgress:
    """Outside a terminal (CI, pipes, --json): one plain line per round/epoch/trial, no control codes."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def begin(self, unit: str, total: int, title: str) -> None:
        self.t0 = time.perf_counter()

    def step(self, step) -> None:
        print(f"{step.unit} {step.done}/{step.total}  {describe(step)}  "
              f"({time.perf_counter() - self.t0:.1f} s)", flush=True)

    def end(self) -> None:
        pass


class LiveProgress:
    """In a terminal: one live bar per job (step / total, elapsed, remaining, the latest headline
    metric, hospitals that answered / failed this round), left on screen when the job ends."""

    def __init__(self):
        self.bar = None
        self.task = None

    def begin(self, unit: str, total: int, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        if self.bar is None:
            from rich.table import Column

            fixed = dict(no_wrap=True)   # a narrow terminal cuts the metrics, never the count or the times
            self.bar = Progress(TextColumn("[bold]{task.fields[unit]}s", table_column=Column(**fixed)),
                                MofNCompleteColumn(table_column=Column(**fixed)), BarColumn(bar_width=16),
                                TimeElapsedColumn(table_column=Column(**fixed)),
                                TextColumn("[dim]left[/]", table_column=Column(**fixed)),
                                TimeRemainingColumn(table_column=Column(**fixed)),
                                TextColumn("{task.fields[info]}", table_column=Column(**fixed)),
                                console=Console(file=sys.stdout), redirect_stderr=False, refresh_per_second=4)
            self.bar.start()
        if self.task is not None:
            self.bar.remove_task(self.task)
        room = self._room()
        self.task = self.bar.add_task(title, total=total, unit=unit, info=f"[dim]{title[:room]}[/]")

    def _room(self) -> int:
        return max(10, self.bar.console.width - 50)   # what the count, bar and times leave the metrics

    def step(self, step) -> None:
        if self.bar is not None and self.task is not None:
            room = self._room()
            info = describe(step)
            # drawn now, not at the next of 4 refreshes a second: a job whose rounds take
            # milliseconds (the vectorized engine) still shows each one
            self.bar.update(self.task, completed=step.done, total=step.total,
                            info=info if len(info) <= room else info[:room - 1] + "…", refresh=True)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = self.task = None


def describe(step) -> str:
    parts = [f"{k} {v:.4f}" for k, v in step.metrics.items()]
    if step.answered is not None:
        parts.append(f"{step.answered} hospitals answered" + (f", {step.failed} failed" if step.failed else ""))
    if step.note:
        parts.append(step.note)
    return "  ".join(parts)
