"""Process environment for the stack: quiet, local, and nothing written to $HOME behind the user's back."""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import tempfile
from pathlib import Path

from orchestrator.process import stop_on_sigterm


def consortium_home() -> Path:
    """Where jobs keep their working files (Flower home, Ray Train checkpoints): ./.consortium."""
    home = os.environ.get("CONSORTIUM_HOME")
    return Path(home).resolve() if home else (Path.cwd() / ".consortium").resolve()


def prepare_environment() -> None:
    """Set before Flower, Ray or MLflow are imported. A value the user already set wins."""
    home = consortium_home()
    os.environ.setdefault("CONSORTIUM_HOME", str(home))
    defaults = {
        "FLWR_HOME": str(home / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's socket paths must stay short (AF_UNIX limit), so not under a deep cwd.
        "RAY_TMPDIR": str(Path(tempfile.gettempdir()) / f"consortium-ray-{os.getuid()}"),
        "RAY_DEDUP_LOGS": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        # A local runtime on loopback only: without this Ray swaps 127.0.0.1 for the machine's
        # routable address and its servers listen on every interface. (Joining a cluster by
        # address turns cluster addressing back on: jobs.ray.session.connect.)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "GIT_PYTHON_REFRESH": "quiet",
        # A tracking server that is briefly away must not stall training: MLflow gives up fast
        # and Consortium keeps the metrics and sends them again (tracking.TrackedRun.flush).
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    Path(os.environ["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)


def leave_submission_dir() -> None:
    """In a job sent by `consortium submit`, work from CONSORTIUM_HOME, not the job's working_dir.

    Ray may garbage-collect the unpacked working_dir once the Train workers that share it exit,
    while the driver still stands in it (MLflow's log_model then fails on os.getcwd()). The job's
    paths were made absolute by `submit`, so nothing depends on that directory after start-up.
    """
    if os.environ.get("CONSORTIUM_SUBMITTED") == "1":
        home = consortium_home()
        home.mkdir(parents=True, exist_ok=True)
        os.chdir(home)


def ray_init_args() -> dict:
    """A local Ray runtime pinned to the loopback address, sized to this machine."""
    from orchestrator.adapters.ray import cluster_addressing

    cluster_addressing(False)   # also when ray was imported before prepare_environment()
    return {
        "num_cpus": os.cpu_count() or 1,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "_temp_dir": os.environ.get("RAY_TMPDIR", tempfile.gettempdir()),
        "logging_level": "ERROR",
        "log_to_driver": False,
        "configure_logging": True,
    }


class _DropDeprecationNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


def quiet_flower(verbose: bool) -> None:
    """Flower logs every round at INFO; we report rounds ourselves. CONSORTIUM_VERBOSE=1 shows all."""
    from orchestrator.jobs import capture

    logger = logging.getLogger("flwr")
    if verbose:
        logger.setLevel(logging.DEBUG)
        return
    # while the console is captured Flower's round log goes to the run's logs/console.txt
    logger.setLevel(logging.INFO if capture.active() else logging.WARNING)
    if not any(isinstance(f, _DropDeprecationNotices) for f in logger.filters):
        logger.addFilter(_DropDeprecationNotices())


class EarlyRuntime:
    """Start the local Ray runtime in a background thread while the driver does other work
    (a simulation's, or a Ray Train job's on a local runtime).

    ray.init spends most of its ~10 s waiting for its own processes; importing MLflow and Flower
    and opening the run meanwhile takes about as long. (Warming worker processes with imports
    does not help: Ray starts fresh processes for the simulation's actors.)

    The thread stays alive until `release()`: Ray's processes are tied to the thread that started
    them (they are killed when it ends).
    """

    def __init__(self, init_args: dict, env_vars: dict[str, str] | None = None):
        """`env_vars`: the workers' environment; by default Flower's (the driver's sys.path)."""
        import sys

        if env_vars is None:
            pythonpath = os.pathsep.join(sys.path)  # what Flower's own ray.init would give its actors
            if os.environ.get("PYTHONPATH"):
                pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
            os.environ["PYTHONPATH"] = pythonpath
            env_vars = {"PYTHONPATH": pythonpath}
        self.runtime_env = {"env_vars": env_vars}
        self.error: BaseException | None = None
        self._up = threading.Event()
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(init_args,),
                                        name="consortium-ray-runtime", daemon=True)
        self._thread.start()

    def _start(self, init_args: dict) -> None:
        try:
            import ray

            ray.init(runtime_env=self.runtime_env, **init_args)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self._up.set()
        self._released.wait()

    def join(self) -> None:
        """Wait until the runtime is up; bind SIGTERM again (ray.init replaced the handler)."""
        self._up.wait()
        if self.error is not None:
            self.release()
            raise self.error
        stop_on_sigterm()

    def release(self) -> None:
        """The runtime has been shut down (Flower does at the end of a simulation): let the thread end."""
        self._released.set()

    def stop(self) -> None:
        """Shut the runtime down if it is still up (the job ended before its simulation did)."""
        self._up.wait()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.release()


def start_simulation_runtime(address: str | None = None) -> EarlyRuntime:
    """The Ray runtime Flower's simulation would start (same arguments and runtime env), started by
    us in the background: the job opens its MLflow run meanwhile, and SIGTERM can be bound again
    once it is up (ray.init installs a handler that aborts the process; a stopped job must instead
    end its run as KILLED with its rounds kept). Flower finds it running, uses it, shuts it down."""
    import ray

    if ray.is_initialized():
        # Flower shuts its runtime down when the simulation ends: it must never be one that a
        # Ray Train job (or the user) still needs, so the simulation always starts its own.
        ray.shutdown()
    if address is not None:
        # `ray.address`: the hospitals' actors on an existing cluster's nodes (Flower sizes its
        # pool per node). Flower's ray.shutdown() at the end only disconnects this driver.
        from orchestrator.adapters.ray import cluster_addressing

        cluster_addressing(True)   # the cluster's nodes reach each other by address
        return EarlyRuntime({"address": address, "logging_level": "ERROR", "log_to_driver": False})
    return EarlyRuntime(ray_init_args())


_REPO = Path(__file__).resolve().parents[2]   # the repository (or the installed tree)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
