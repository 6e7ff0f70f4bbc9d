"""`consortium` command line: run and validate jobs described by one YAML file.

Exit codes: 0 done; 2 a mistake in the YAML, an override or the data (nothing started);
1 a job that failed after it started (its MLflow run is marked FAILED, what was logged is kept);
130 interrupted (run marked KILLED).

Every command lives here, one module per family, registered on `app.app`: jobs.py (run, validate,
submit, resume, init, schema), runs.py (compare, runs, models, ui, server, serve, predict),
models.py (crossval, sample), federation.py (`consortium federation ...`); session.py is what a
running job's command does around it (the console, the job, its exit code).
"""
from __future__ import annotations

import gc
import sys

from orchestrator.cli import jobs  # noqa: F401, I001 - each registers its commands, in this order
from orchestrator.cli import runs  # noqa: F401
from orchestrator.cli import models  # noqa: F401
from orchestrator.cli import federation  # noqa: F401
from orchestrator.cli import site  # noqa: F401
from orchestrator.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        # Everything is recorded and the process is about to end. Left alone, Python's final
        # garbage collection walks the whole heap (torch, MLflow, Flower, Ray) before exiting:
        # ~3 s after a tracked job. Frozen objects are skipped; the OS reclaims the memory anyway.
        gc.freeze()
