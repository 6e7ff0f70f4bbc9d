"""`consortium submit`: package the project and a resolved job, run it as a Ray job on a head node."""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from orchestrator.spec.job import JobSpec
from orchestrator.spec.errors import UserError
from orchestrator.spec.loading import dump_yaml
from orchestrator.jobs.ray.session import SUBMITTED_ENV, worker_env
from orchestrator.jobs.runtime import consortium_home

ROOT = Path(__file__).resolve().parents[3]   # where orchestrator/, clients/ and strategies/ live
PACKAGES = ("orchestrator", "clients", "strategies")


def stage(job: JobSpec) -> Path:
    """A small working_dir: our packages plus the resolved job (never .venv, stores or results)."""
    d = Path(tempfile.mkdtemp(prefix="consortium-submit-"))
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, d / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # A unique first line gives each submission its own package: Ray names packages by content
    # hash, and a package shared with a finished job can be garbage-collected under a new one.
    (d / "job.yaml").write_text(f"# consortium submission {uuid.uuid4().hex}\n" + dump_yaml(job))
    return d


# What the submitted job needs besides our own packages (which travel in its working_dir).
NEEDS = ("torch", "mlflow", "flwr", "ray", "typer", "pydantic", "yaml", "sklearn")
MISSING_MARK = "consortium-missing-packages:"


def entrypoint(python: str) -> str:
    """The shell command the head runs. By default the Python that runs the head's Ray (the job's
    shell is a child of Ray's job supervisor, a worker of that interpreter): a head started as
    .venv/bin/ray without the venv activated has only a bare `python` on its PATH, which lacks our
    packages. Before anything starts, the packages are checked, and what is missing is said in one
    line the submitter turns into its message."""
    # The head's raylet names that interpreter in its --python_worker_command (Ray retitles the
    # supervisor itself, and its /proc exe is the base interpreter, outside the venv).
    find = ('P=$PPID; PY=; for _ in 1 2 3 4; do '
            'PY="$(tr \'\\000\' \'\\n\' < /proc/$P/cmdline 2>/dev/null '
            '| sed -n \'s/^--python_worker_command=\\([^ ]*\\).*/\\1/p\')"; '
            '[ -n "$PY" ] && break; P="$(awk \'/^PPid/{print $2}\' /proc/$P/status 2>/dev/null)"; '
            '[ -n "$P" ] || break; done; '
            '[ -x "$PY" ] || PY="$(command -v python3 || command -v python)"; ') if python == "auto" else f"PY={python}; "
    check = ("import importlib.util as u, sys; "
             f"m = [n for n in {NEEDS!r} if u.find_spec(n) is None]; "
             f"m and print({MISSING_MARK!r}, sys.executable, ', '.join(m)); sys.exit(3 if m else 0)")
    return f'{find}"$PY" -c "{check}" && exec "$PY" -m orchestrator.cli run job.yaml --debug'


def submit(job: JobSpec, address: str, python: str = "auto", wait: bool = True, log=print) -> int:
    """Submit and (by default) stream the job's logs; returns 0 if the Ray job SUCCEEDED, 2 if the
    cluster's Python lacks Consortium's packages, else 1."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from orchestrator.tracking.store import resolve_uri

    if job.data.path and not Path(job.data.path).is_absolute():
        job = job.model_copy(update={"data": job.data.model_copy(update={"path": str(Path(job.data.path).resolve())})})
    # The job runs elsewhere: pin the store this machine would use, and join the cluster it runs on.
    job = job.model_copy(update={
        "tracking": job.tracking.model_copy(update={"uri": resolve_uri(job.tracking.uri)}),
        "ray": job.ray.model_copy(update={"address": "auto"}),
    })
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, ValueError for a malformed address ...
        raise UserError("--address", [f"no Ray job server at {address}: {str(exc).splitlines()[0][:300]}"]) from None
    workdir = stage(job)
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint(python),
            runtime_env={"working_dir": str(workdir),
                         # The driver and its Train workers inherit this env; the driver adds none of its
                         # own (a second runtime_env would replace the job's working_dir under it).
                         "env_vars": {**worker_env(), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                                      # checkpoints beside the submitter's, not in the job's scratch dir
                                      "CONSORTIUM_HOME": str(consortium_home()),
                                      SUBMITTED_ENV: "1"}},
            metadata={"consortium_job": job.name},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"submitted Ray job {job_id} to {address}")
    if not wait:
        return 0

    missing: list[str] = []

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            for line in lines.splitlines(keepends=True):
                if line.startswith(MISSING_MARK):
                    missing.append(line[len(MISSING_MARK):].strip())
                elif not line.startswith("Running entrypoint for job"):  # Ray echoes the whole shell line
                    sys.stdout.write(line)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
    except Exception as exc:  # noqa: BLE001 - the log stream broke off (a job that ended at once): poll
        log(f"(the job's log stream ended early: {type(exc).__name__}; waiting for its status)")
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if not missing and status != JobStatus.SUCCEEDED:
        try:  # the stream may have missed the check's line: the whole log has it
            missing = [line[len(MISSING_MARK):].strip() for line in client.get_job_logs(job_id).splitlines()
                       if line.startswith(MISSING_MARK)]
        except Exception:  # noqa: BLE001 - only a better message is lost
            pass
    if missing:
        interpreter, _, names = missing[0].partition(" ")
        raise UserError(f"Ray cluster {address}", [
            f"its Python ({interpreter}) lacks Consortium's packages ({names}): install the locked environment "
            "on every node (`bash scripts/setup.sh` in a clone, or the deploy/docker image) and start Ray from it, "
            "or point --python at a Python that has them"])
    log(f"Ray job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1
