"""The Ray runtime a cluster job runs on: a local one started here, or a cluster joined by address,
checked against the job before any run is created (no GPU, workers that can never be placed and
addresses nobody answers at are user errors, exit 2, not a hang)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.jobs.runtime import EarlyRuntime, consortium_home, ray_init_args
from orchestrator.process import stop_on_sigterm
from orchestrator.spec.errors import UserError
from orchestrator.spec.job import JobSpec

# Ray Train drains reports every 2 s by default: short epochs would each stall to 2 s.
_HEALTH_CHECK_S = "0.1"
# Set in the runtime env of a job sent by `consortium submit`: the job already carries our env.
SUBMITTED_ENV = "CONSORTIUM_SUBMITTED"


@dataclass
class RaySession:
    address: str | None
    started_local: bool
    resources: dict[str, float] = field(default_factory=dict)


def worker_env() -> dict[str, str]:
    keep = ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "CONSORTIUM_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _HEALTH_CHECK_S)
    return env


def reachable(address: str, timeout: float = 3.0) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _fresh_runtime() -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _HEALTH_CHECK_S)
    if ray.is_initialized():
        # A runtime left by Flower or an earlier job: Flower shuts its runtime down at the end of
        # every simulation, so a Ray Train job always gets a runtime of its own.
        ray.shutdown()


def start_local(job: JobSpec) -> EarlyRuntime | None:
    """A job on a local runtime: start it in the background (~4 s) while the driver imports
    MLflow; `connect(job, early)` then waits for it. None for a cluster or a submitted job."""
    if job.ray.address is not None or os.environ.get(SUBMITTED_ENV) == "1":
        return None
    _fresh_runtime()
    return EarlyRuntime(ray_init_args(), env_vars=worker_env())


def connect(job: JobSpec, early: EarlyRuntime | None = None) -> RaySession:
    """Start or join the Ray runtime and check the job can be placed, before any run is created."""
    import ray

    spec = job.ray
    if early is None:
        _fresh_runtime()
    runtime_env = None if os.environ.get(SUBMITTED_ENV) == "1" else {"env_vars": worker_env()}
    if early is not None:
        early.join()  # started by start_local(); a failed start is raised here
    elif spec.address is None:
        ray.init(runtime_env=runtime_env, **ray_init_args())
    else:
        from orchestrator.adapters.ray import cluster_addressing

        cluster_addressing(True)   # a cluster's nodes reach each other by routable address
        if spec.address != "auto" and not reachable(spec.address):
            raise UserError("ray.address", [f"nothing answers at {spec.address}: start a head with "
                                            f"`ray start --head --node-ip-address=127.0.0.1` or fix the address"])
        try:
            ray.init(address=spec.address, runtime_env=runtime_env, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError("ray.address", [f"cannot join the Ray cluster at {spec.address}: "
                                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]) from None
    session = RaySession(spec.address, started_local=spec.address is None)
    stop_on_sigterm()
    try:
        check_placement(job, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    except UserError:
        ray.shutdown()
        raise
    session.resources = dict(ray.cluster_resources())
    return session


def worker_resources(job: JobSpec) -> dict[str, float]:
    need = dict(job.ray.resources_per_worker)
    if job.ray.use_gpu:
        need.setdefault("GPU", 1.0)
    return need


def check_placement(job: JobSpec, nodes: list[dict[str, float]]) -> None:
    """Refuse, with a fix, what the cluster can never place (instead of waiting forever)."""
    spec, need = job.ray, worker_resources(job)
    total = {r: sum(n.get(r, 0.0) for n in nodes) for r in need}
    problems = []
    if spec.use_gpu and total.get("GPU", 0.0) == 0:
        problems.append("ray.use_gpu: true, but the cluster has no GPU: set ray.use_gpu=false")
    else:
        fits = 0
        for node in nodes:
            per = [int(node.get(r, 0.0) // q) for r, q in need.items() if q > 0]
            fits += min(per) if per else spec.num_workers
        if fits < spec.num_workers:
            have = ", ".join(f"{r}={total[r]:g}" for r in need)
            problems.append(f"ray.num_workers: {spec.num_workers} workers x {need} cannot be placed on this cluster "
                            f"({len(nodes)} node(s), {have}); at most {fits} fit: lower ray.num_workers or "
                            f"ray.resources_per_worker")
    if problems:
        raise UserError("ray", problems)


def disconnect(session: RaySession) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def storage_root() -> Path:
    return consortium_home() / "ray_results"
