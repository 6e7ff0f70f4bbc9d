"""The job kind of a job: `orchestrator.spec.job.JOB_KINDS` names the module, imported here on first use."""
from __future__ import annotations

import importlib

from orchestrator.jobs.base import JobKind
from orchestrator.spec.job import JOB_KINDS


def kind_of(name: str) -> JobKind:
    return importlib.import_module(JOB_KINDS[name]).KIND
