"""The engines a federated job runs in, behind one function: `run_engine(name, ...)`.

simulation  Flower's simulation engine: every hospital a Ray actor, the ServerApp in a thread here.
inline      the same ServerApp and ClientApp in this process, hospitals called one after another
            (`inline.InlineGrid`): no Ray start-up, identical metrics for the same seed.
vectorized  inline, but a round's training and evaluation run for all its hospitals as one batched
            computation (`vectorized.VectorizedGrid`); the same replies, to float tolerance.
deployment  Flower's deployment engine: this process *is* the ServerApp the SuperLink started
            (`deployed.serve`); the rounds run on the grid of SuperNodes it was given.
In the first two the module-level ServerApp (`server_app.app`) runs the `Rounds` bound to it.
"""
from __future__ import annotations

import os

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp

from orchestrator.core.protocol import NUM_PARTITIONS, PARTITION_ID
from orchestrator.jobs.federated import server_app
from orchestrator.jobs.runtime import EarlyRuntime, ray_init_args, start_simulation_runtime
from orchestrator.process import quiet_after_interrupt


def run_engine(engine: str, rounds: server_app.Rounds, client_app: ClientApp, num_clients: int,
               runtime: EarlyRuntime | None = None, deployed=None) -> None:
    """Run `rounds` to the end in `engine` (one of `spec.engines.ENGINES`) with `num_clients`
    hospitals running `client_app` (deployment: on the SuperNodes of `deployed`, a `deployed.Deployed`)."""
    if engine not in RUNNERS:
        raise ValueError(f"federated.engine: no runner for engine {engine!r} (spec.engines.ENGINES declares it)")
    RUNNERS[engine](rounds, client_app, num_clients, runtime, deployed)


def _deployment(rounds, client_app, num_clients, runtime, deployed) -> None:
    rounds.main(deployed.grid, deployed.context)


def _in_process(vectorized: bool):
    def run(rounds, client_app, num_clients, runtime, deployed) -> None:
        with server_app.bound(rounds):
            if runtime is not None:
                runtime.stop()
            _inline(client_app, num_clients, vectorized=vectorized)
    return run


def _simulated(rounds, client_app, num_clients, runtime, deployed) -> None:
    with server_app.bound(rounds):
        _simulation(client_app, num_clients, rounds.job, runtime)


def _inline(client_app: ClientApp, num_clients: int, vectorized: bool = False) -> None:
    from orchestrator.adapters.flower import server_identity
    from orchestrator.jobs.federated.inline import SERVER_NODE_ID, InlineGrid

    if vectorized:
        from orchestrator.jobs.federated.vectorized import VectorizedGrid as InlineGrid  # noqa: N814
    grid = InlineGrid(client_app, [{PARTITION_ID: i, NUM_PARTITIONS: num_clients} for i in range(num_clients)])
    with server_identity(grid.run.run_id, SERVER_NODE_ID):
        server_app.app(grid, Context(run_id=grid.run.run_id, node_id=1, node_config={}, state=RecordDict(),
                                     run_config={}))


def _simulation(client_app: ClientApp, num_clients: int, job, runtime: EarlyRuntime | None) -> None:
    import ray
    from flwr.simulation import run_simulation

    resources = job.federated.client_resources
    backend_config = {"client_resources": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
                      "init_args": ray_init_args()}
    runtime = runtime or start_simulation_runtime()
    runtime.join()
    try:
        run_simulation(server_app=server_app.app, client_app=client_app, num_supernodes=num_clients,
                       backend_config=backend_config, verbose_logging=os.environ.get("CONSORTIUM_VERBOSE") == "1")
    except KeyboardInterrupt:
        quiet_after_interrupt()  # the actors' in-flight messages fail loudly as Ray goes: say nothing
        ray.shutdown()  # Ctrl-C / SIGTERM: stop the runtime and the hospitals' actors now
        raise
    finally:
        runtime.stop()


RUNNERS = {"simulation": _simulated, "inline": _in_process(False), "vectorized": _in_process(True),
           "deployment": _deployment}   # one per engine that spec.engines.ENGINES declares
