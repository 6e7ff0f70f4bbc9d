"""Which engine runs a federated job: `choose_engine`, and what the vectorized engine refuses.

`federated.engine: auto` (the default) picks the fastest engine that runs the job: Flower's
simulation engine when the job asks for what only Ray gives (hospitals in parallel processes, on
GPUs, on a cluster, or stopped when too slow), else an in-process engine, which has no Ray start-up:
the vectorized one, or the inline one where the vectorized one would not give the same metrics.
"""
from __future__ import annotations


def vectorized_refusal(job) -> str | None:
    """Why the vectorized engine cannot run `job`, naming the engine that can; None when it can."""
    fed = job.federated
    if fed.secagg is not None and fed.secagg.enabled:
        return ("cannot run SecAgg+ (its protocol exchanges messages of its own with every hospital): "
                "set federated.engine: simulation or inline")
    if fed.dp is not None and fed.dp.mode == "local":
        return ("cannot run local DP-SGD (per-example clipping and noise in each hospital's loop): "
                "set federated.engine: inline or simulation")
    if job.model.name == "gan":
        return "cannot run a GAN's alternating steps: set federated.engine: inline or simulation"
    if fed.personalize is not None and fed.personalize.stateful:
        return (f"cannot keep each hospital's own part between rounds (federated.personalize.method "
                f"{fed.personalize.method}): set federated.engine: inline or simulation")
    if job.model.batchnorm:
        return ("cannot carry batch norm's running statistics through a batched functional step: "
                "set model.batchnorm: false, or federated.engine: inline or simulation")
    return None


def choose_engine(job) -> tuple[str, str]:
    """(the engine that runs `job`, why): `federated.engine` unless it is auto."""
    fed = job.federated
    if fed.engine != "auto":
        return fed.engine, "federated.engine set in the config"
    if fed.parallel:
        return "simulation", "federated.parallel: true: a round's hospitals train in parallel, a Ray actor each"
    if fed.client_resources.num_gpus > 0:
        return "simulation", "federated.client_resources.num_gpus > 0: hospitals train on GPUs, through Ray"
    if job.ray.address:
        return "simulation", f"ray.address {job.ray.address}: hospitals run as actors on that Ray cluster"
    if "round_timeout_s" in fed.model_fields_set:
        return "simulation", "federated.round_timeout_s: only the simulation engine stops a hospital that runs too long"
    refusal = vectorized_refusal(job)
    if refusal is None and job.model.dropout > 0:
        refusal = "model.dropout > 0: it would draw other dropout masks than each hospital's own seeded loop"
    if refusal is not None:
        return "inline", ("one machine serves this job: hospitals in this process one after another, no Ray "
                          f"start-up (not vectorized: {refusal.split(':')[0]})")
    return "vectorized", ("one machine serves this job: the round's hospitals train in this process as one "
                          "batched computation, no Ray start-up")
