"""The console is ours: what MLflow, Flower, Ray, torch and their C++ cores say while a job runs
goes to a file instead (`.consortium/logs/console-PID.txt`), and that file is logged into the run
as `logs/console.txt`, so nothing they said is lost for a bug report. `--verbose` shows it too.

Both levels are caught: Python's sys.stderr (logging handlers, warnings, tracebacks of dying
threads) and file descriptor 2 (C++ logs, gRPC, child processes that inherit it). Consortium's own
messages go to the terminal through `terminal()`. Started by `consortium run`/`resume` only; the
Python API leaves the caller's streams alone.
"""
from __future__ import annotations

import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_LOGGED = 20_000_000   # the last 20 MB of a very chatty run are what gets logged

if TYPE_CHECKING:
    from orchestrator.tracking.protocol import Run


class _Tee(io.TextIOBase):
    """sys.stderr while capturing; `terminal` is where our own messages still reach the person."""

    def __init__(self, *streams, terminal=None):
        self.streams = [s for s in streams if s is not None]
        self.terminal = terminal

    def write(self, text: str) -> int:
        for s in self.streams:
            try:
                s.write(text)
            except (OSError, ValueError):
                pass
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            try:
                s.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


class Capture:
    def __init__(self, path: Path, verbose: bool):
        self.path, self.verbose = path, verbose
        self.file = None
        self._terminal = None
        self._saved_fd: int | None = None
        self._saved_stderr = None
        self.logged = False    # kept in a run: the file itself can go at the end

    def start(self) -> "Capture":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", buffering=1, encoding="utf-8", errors="replace")
        self._saved_stderr = sys.stderr
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._terminal = os.fdopen(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        if not self.verbose:
            os.dup2(self.file.fileno(), 2)
        sys.stderr = _Tee(self.file, self._terminal if self.verbose else None, terminal=self._terminal)
        logging.captureWarnings(True)
        # Consortium's own warnings (a tracking store that is away, a checkpoint that failed) are for
        # the person at the terminal; the file keeps them too.
        ours = logging.getLogger("consortium")
        for stream in (self._terminal, self.file):
            handler = logging.StreamHandler(stream)
            handler.setLevel(logging.WARNING if stream is self._terminal else logging.INFO)
            handler.setFormatter(logging.Formatter("consortium: %(message)s"))
            ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
        return self

    def terminal(self):
        return self._terminal

    def text(self) -> str:
        sys.stderr.flush()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(max(0, self.path.stat().st_size - MAX_LOGGED))
            return ANSI.sub("", f.read())   # Flower colours its log: plain text in the artifact

    def stop(self) -> None:
        if self.file is None:
            return
        try:
            sys.stderr.flush()
            if self._saved_fd is not None:
                os.dup2(self._saved_fd, 2)
                os.close(self._saved_fd)
        finally:
            sys.stderr = self._saved_stderr
            self._saved_fd = None
            ours = logging.getLogger("consortium")
            for h in list(ours.handlers):
                if isinstance(h, logging.StreamHandler) and h.stream in (self._terminal, self.file):
                    ours.removeHandler(h)
            self.file.close()
            self.file = None
            if self.logged:
                self.path.unlink(missing_ok=True)


_active: Capture | None = None


def start(home: Path, verbose: bool) -> Capture | None:
    """Capture from now on, when stderr is a real file (not a test's in-memory stream)."""
    global _active
    if _active is not None:
        return _active
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    _active = Capture(home / "logs" / f"console-{os.getpid()}.txt", verbose).start()
    import atexit

    atexit.register(stop)
    return _active


def active() -> Capture | None:
    return _active


def terminal():
    """Where Consortium's own console messages go: the terminal, also while capturing."""
    return _active.terminal() if _active is not None else sys.stderr


def log_into(run: Run) -> None:
    """Keep what the libraries said in the run (`logs/console.txt`); never fails the job."""
    if _active is None or not run.tracked:   # tracking off: the file is the record
        return
    try:
        run.log_text(_active.text(), "logs/console.txt")
        _active.logged = True
    except Exception as exc:  # noqa: BLE001 - the run's record matters more than its console copy
        logging.getLogger("consortium").warning("could not keep the console log in the run: %s", exc)


def stop() -> None:
    global _active
    if _active is not None:
        _active.stop()
        _active = None
