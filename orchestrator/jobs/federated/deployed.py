"""The ServerApp in Flower's deployment engine: a job submitted by `consortium run` to a SuperLink.

`consortium run` (federated.engine: deployment, `orchestrator.federation.submit`) opens the MLflow
run and starts this Flower App with the job (JSON) and that run's id in the run config. Here, in the
process the SuperLink's SuperExec starts for the run, the coordinator holds no hospital data:
it waits for the hospitals, asks each what its data is (`census.describe_census`), agrees the
schema from their answers (`plan.plan_from_census`), then runs the job's whole lifecycle
(`runner.execute`: rounds, report, model, registration) into that run. Any failure is recorded on
the run (tags `consortium.error`, `consortium.error_kind`) before the run is marked FAILED, so the
submitter can say what went wrong.
"""
from __future__ import annotations

import time

from flwr.app import Context
from flwr.serverapp import Grid

from orchestrator.core.protocol import RUN_JOB, RUN_MLFLOW
from orchestrator.jobs.base import Launched

ERROR_TAG, ERROR_KIND_TAG = "consortium.error", "consortium.error_kind"


class Deployed(Launched):
    """The grid Flower's deployment engine gave this ServerApp: the federation's SuperNodes."""

    def __init__(self, grid: Grid, context: Context):
        self.grid, self.context = grid, context


class Prompt:
    """Flower's grid as the ServerApp got it, except that `send_and_receive` asks the SuperLink for
    the replies every `poll_s` (federated.poll_interval_s) where Flower's asks every 3 s: a round's
    train and evaluate each waited up to 3 s past the last reply. Same answer: the replies that came
    within `timeout`, in the order they came. A message's arrays cross packed as one
    (`core.packing`): pushed packed, pulled unpacked."""

    def __init__(self, grid: Grid, poll_s: float):
        self._grid, self._poll_s = grid, poll_s

    def push_messages(self, messages) -> list:
        from orchestrator.core.packing import pack_message

        messages = list(messages)
        memo: dict = {}
        for message in messages:
            pack_message(message, memo)
        return list(self._grid.push_messages(messages))

    def pull_messages(self, message_ids) -> list:
        from orchestrator.core.packing import unpack_message

        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            unpack_message(reply)
        return replies

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list:
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list = []
        while waiting and (end is None or time.monotonic() < end):
            got = self.pull_messages(waiting)
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(self._poll_s if end is None else max(0.0, min(self._poll_s, end - time.monotonic())))
        return replies

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def wait_for_hospitals(grid: Grid, job) -> list[int]:
    """The connected SuperNodes, once `federated.num_clients` have joined, or once
    `federated.join_timeout_s` has passed with at least `min_available_clients` (default: 1) of them."""
    fed = job.federated
    expected, least = fed.num_clients, fed.min_available_clients or 1
    deadline = time.monotonic() + fed.join_timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if expected is not None and len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= least:
                return nodes
            raise RuntimeError(f"only {len(nodes)} hospital(s) joined the federation within "
                               f"federated.join_timeout_s={fed.join_timeout_s:g}s (expected "
                               f"{expected if expected is not None else 'any'}, at least {least})")
        time.sleep(0.2)


def serve(grid: Grid, context: Context) -> None:
    """Run the submitted job; raise (Flower marks the run failed) after recording why."""
    job_json, run_id = str(context.run_config.get(RUN_JOB, "")), str(context.run_config.get(RUN_MLFLOW, ""))
    if not job_json or not run_id:
        raise RuntimeError("this ServerApp runs jobs submitted by `consortium run CONFIG` with "
                           "federated.engine: deployment (run config `job` and `mlflow-run` are empty)")
    from orchestrator.jobs.runtime import prepare_environment
    from orchestrator.spec.job import JobSpec

    prepare_environment()
    job = JobSpec.model_validate_json(job_json)
    from orchestrator.jobs.federated.census import describe_census
    from orchestrator.jobs.kinds import kind_of
    from orchestrator.jobs.plan import plan_from_census
    from orchestrator.jobs.lifecycle import Attach
    from orchestrator.jobs.runner import execute, open_tracker

    tracker = open_tracker(job)
    from orchestrator.adapters.flower import prompt_object_pulls

    prompt_object_pulls()   # a reply's arrays, asked for again
    grid = Prompt(grid, job.federated.poll_interval_s)  # type: ignore[assignment]
    try:
        nodes = wait_for_hospitals(grid, job)
        plan = plan_from_census(job, describe_census(grid, nodes, job_json, job.federated.round_timeout_s, run_id))
        execute(job, plan, tracker, Attach(run_id), kind=kind_of("federated"), launched=Deployed(grid, context))
    except BaseException as exc:
        record_failure(tracker, run_id, exc)
        raise


def record_failure(tracker, run_id: str, exc: BaseException) -> None:
    """The error on the run, for `consortium run` to print; the run FAILED (KILLED when stopped)."""
    from orchestrator.spec.errors import UserError
    from orchestrator.tracking.stores import retrying

    kind = "user" if isinstance(exc, UserError) else "stopped" if isinstance(exc, KeyboardInterrupt) else "job"
    text = exc.render() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    try:
        retrying(tracker.client.set_tag, run_id, ERROR_TAG, text[:5000], attempts=4)
        retrying(tracker.client.set_tag, run_id, ERROR_KIND_TAG, kind, attempts=4)
        if tracker.client.get_run(run_id).info.status == "RUNNING":
            retrying(tracker.client.set_terminated, run_id, "KILLED" if kind == "stopped" else "FAILED", attempts=4)
    except Exception:  # noqa: BLE001 - the store is gone: the submitter marks the run itself
        pass
