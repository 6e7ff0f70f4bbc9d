"""`consortium run CONFIG` with federated.engine: deployment: submit the job to a running SuperLink.

1. Open the job's MLflow run here (same store and experiment as any job), RUNNING and empty.
2. `flwr run APP consortium` with the job (JSON) and that run's id in the run config: the
   SuperLink starts our ServerApp (`jobs.federated.deployed`), which fills the run.
3. Stream the run's progress (the ServerApp's `[consortium]` lines; Flower's own log is kept
   as the run's artifact `logs/serverapp.txt`), then read the outcome from the run itself:
   FINISHED -> exit 0; FAILED with a data or config mistake -> exit 2 naming the hospital;
   any other failure -> exit 1; Ctrl-C -> the Flower run is stopped, the MLflow run KILLED.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from orchestrator.federation.flower import CONNECTION, Link, binary, connection_home, environment, flwr, json_out

PROGRESS = "[consortium] "


def app_dir() -> Path:
    """The Flower App: the project holding `[tool.flwr.app]` in its pyproject.toml."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or "[tool.flwr.app]" not in (root / "pyproject.toml").read_text():
        raise RuntimeError(f"{root}: no pyproject.toml with [tool.flwr.app]; install Consortium from its source tree")
    return root


def absolute_uri(uri: str) -> str:
    """A SQLite store named relative to here, made absolute: the ServerApp runs elsewhere."""
    from orchestrator.tracking.stores import resolve_uri

    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(Path.cwd() / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def link_of(job) -> Link:
    fed = job.federated
    return Link(fed.superlink, None if fed.insecure else Path(fed.root_certificates).expanduser().resolve())


def _toml_overrides(path: Path, values: dict[str, str]) -> Path:
    # JSON strings (ensure_ascii off: no surrogate escapes) are valid TOML basic strings
    path.write_text("".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in values.items()))
    return path


def run_deployed(job, say=print):
    """Submit `job`, stream its progress through `say`, return its RunResult (raise on failure)."""
    from orchestrator.jobs.lifecycle import RunResult
    from orchestrator.jobs.runtime import git_commit
    from orchestrator.spec.errors import UserError
    from orchestrator.tracking.store import Tracker

    t0 = time.perf_counter()
    link = link_of(job)
    link.check()
    job = job.model_copy(update={"tracking": job.tracking.model_copy(update={"uri": absolute_uri(job.tracking.uri)})})
    tracker = Tracker(job.tracking.uri, job.tracking.experiment)
    fed = job.federated
    run = tracker.create(f"{job.name}-{fed.strategy.name}-deployed", {
        "kind": job.kind, "job": job.name, "federated.engine": "deployment", "federated.superlink": fed.superlink,
        "git_commit": git_commit(), "dataset": job.data.path or job.data.source})
    home = connection_home(link)
    work = Path(tempfile.mkdtemp(prefix="consortium-submit-"))
    flower_run = None
    try:
        overrides = _toml_overrides(work / "run-config.toml", {"job": job.model_dump_json(), "mlflow-run": run})
        proc = flwr(link, "run", str(app_dir()), CONNECTION, "--format", "json", "--run-config", str(overrides),
                    home=home, timeout=300)
        started = json_out(proc)
        if not started.get("success"):
            detail = (started.get("error-message") or proc.stderr or proc.stdout or "").strip()
            _fail(tracker, run, f"the SuperLink at {fed.superlink} did not start the run: {detail[-1500:]}")
            raise RuntimeError(f"the SuperLink at {fed.superlink} did not start the run: "
                               f"{detail.splitlines()[-1] if detail else proc.returncode}")
        flower_run = int(started["run-id"])
        tracker.client.set_tag(run, "federated.flower_run_id", str(flower_run))
        log = work / "serverapp.txt"
        _stream(link, home, flower_run, log, say)
        status = _final_status(link, home, flower_run)
        if log.exists():
            try:
                tracker.client.log_artifact(run, str(log), "logs")
            except Exception:  # noqa: BLE001 - a missing log artifact is no reason to fail the job
                pass
    except KeyboardInterrupt:
        if flower_run is not None:
            flwr(link, "stop", str(flower_run), CONNECTION, home=home, timeout=30)
        _fail(tracker, run, "stopped by the user (Ctrl-C)", status="KILLED")
        raise
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    info = tracker.client.get_run(run)
    tags = info.data.tags
    if info.info.status != "FINISHED":
        error = tags.get("consortium.error") or (f"the ServerApp ended ({status or 'status unknown'}) without "
                                                 "finishing the run; its log is the run's logs/serverapp.txt")
        if info.info.status == "RUNNING":
            _fail(tracker, run, error)
        if tags.get("consortium.error_kind") == "user":
            source, _, rest = error.partition(" has ")
            problems = [line.strip() for line in rest.splitlines()[1:]] or [error]
            raise UserError(source, problems)
        raise RuntimeError(error.splitlines()[0] if error else "the deployed run failed")
    after = ("time/wall_s", "time/first_round_s", "time/log_model_s")  # logged by the runner, not the rounds
    final = {k: v for k, v in info.data.metrics.items() if "/" in k and not k.startswith("hospital_") and k not in after}
    registered = tags.get("registered_model")
    return RunResult(run, job.tracking.experiment, job.tracking.uri, experiment_id=info.info.experiment_id, final=final,
                     model_uri=f"runs:/{run}/model" if job.tracking.log_model else None, registered=registered,
                     wall_s=time.perf_counter() - t0)


def _fail(tracker, run: str, error: str, status: str = "FAILED") -> None:
    from orchestrator.tracking.stores import retrying

    retrying(tracker.client.set_tag, run, "consortium.error", error[:5000], attempts=4)
    retrying(tracker.client.set_terminated, run, status, attempts=4)


def _stream(link: Link, home: Path, flower_run: int, log: Path, say) -> None:
    """`flwr log RUN --stream` until the run ends: every line to `log`, ours to `say`."""
    proc = subprocess.Popen([binary("flwr"), "log", str(flower_run), CONNECTION, "--stream"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment(home), stdin=subprocess.DEVNULL)
    try:
        with open(log, "w") as out:
            for line in proc.stdout:
                out.write(line)
                at = line.find(PROGRESS)
                if at >= 0:
                    say(line[at + len(PROGRESS):].rstrip())
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def _final_status(link: Link, home: Path, flower_run: int, wait_s: float = 30.0) -> str | None:
    """Flower's status of the run once it has finished ('finished:completed', 'finished:failed', ...)."""
    deadline = time.monotonic() + wait_s
    status = None
    while time.monotonic() < deadline:
        out = json_out(flwr(link, "ls", CONNECTION, "--run-id", str(flower_run), "--format", "json", home=home))
        for r in out.get("runs", []):
            status = str(r.get("status", ""))
        if status and status.startswith("finished"):
            return status
        time.sleep(1.0)
    return status
