"""The engines a federated job can run in, each declaring what it runs: one entry per engine, as job
kinds are one line each. `choose_engine` (for `federated.engine: auto`) and every refusal the spec
makes ("cannot run SecAgg+: set federated.engine: simulation or inline") come from these entries;
`jobs.federated.engines` holds the code that runs each.

`auto` (the default) picks the fastest engine that runs the job: an engine of `WHEN_NEEDED` whose
`needed` says the job asks for what only it gives (hospitals in parallel processes, on GPUs, on a
cluster, or stopped when too slow), else the first of `IN_PROCESS` that can run it and is not
`avoided`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _never(job: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Engine:
    name: str
    summary: str
    kinds: frozenset[str]                              # the job kinds it runs
    cannot: Callable[[Any], str | None] = _never       # why it cannot run a job (naming one that can); None: it can
    needed: Callable[[Any], str | None] = _never       # auto: why the job needs this engine; None: it does not
    avoided: Callable[[Any], str | None] = _never      # auto: why not to pick it although it could run the job


def _simulation_needed(job: Any) -> str | None:
    fed = job.federated
    if fed.parallel:
        return "federated.parallel: true: a round's hospitals train in parallel, a Ray actor each"
    if fed.client_resources.num_gpus > 0:
        return "federated.client_resources.num_gpus > 0: hospitals train on GPUs, through Ray"
    if job.ray.address:
        return f"ray.address {job.ray.address}: hospitals run as actors on that Ray cluster"
    if "round_timeout_s" in fed.model_fields_set:
        return "federated.round_timeout_s: only the simulation engine stops a hospital that runs too long"
    return None


def _vectorized_cannot(job: Any) -> str | None:
    fed = job.federated
    if fed.secagg is not None and fed.secagg.enabled:
        return ("cannot run SecAgg+ (its protocol exchanges messages of its own with every hospital): "
                "set federated.engine: simulation or inline")
    if fed.sites:
        return ("does not pass each hospital's messages through its own site policy, ledger and audit log "
                "(federated.sites): set federated.engine: inline or simulation")
    if fed.dp is not None and fed.dp.mode == "local":
        return ("cannot run local DP-SGD (per-example clipping and noise in each hospital's loop): "
                "set federated.engine: inline or simulation")
    if job.model.name == "gan":
        return "cannot run a GAN's alternating steps: set federated.engine: inline or simulation"
    if fed.personalize is not None and fed.personalize.stateful:
        return (f"cannot keep each hospital's own part between rounds (federated.personalize.method "
                f"{fed.personalize.method}): set federated.engine: inline or simulation")
    if job.model.norm == "batch" or job.model.batchnorm:
        key = "model.batchnorm: false" if job.model.batchnorm else "model.norm: group (or none)"
        return ("cannot carry batch norm's running statistics through a batched functional step: "
                f"set {key}, or federated.engine: inline or simulation")
    if job.model.name in ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0"):
        return (f"batches the small families (mlp, cnn, recurrent, transformer), not {job.model.name}: "
                "set federated.engine: inline or simulation")
    if job.model.spatial_dims == 3:
        return "batches 2D networks, not 3D ones (model.spatial_dims 3): set federated.engine: inline or simulation"
    if job.model.head in ("multilabel", "segmentation"):
        return (f"scores softmax, sigmoid and linear heads, not model.head {job.model.head}: "
                "set federated.engine: inline or simulation")
    if job.train.augment.enabled:
        return ("cannot augment each hospital's images in its batched step (train.augment): "
                "set federated.engine: inline or simulation")
    return None


def _vectorized_avoided(job: Any) -> str | None:
    if job.model.dropout > 0:
        return "model.dropout > 0: it would draw other dropout masks than each hospital's own seeded loop"
    return None


ENGINES = {e.name: e for e in (
    Engine("simulation", "Flower's simulation engine: a Ray actor per hospital", frozenset({"federated"}),
           needed=_simulation_needed),
    Engine("inline", "in this process, the hospitals one after another", frozenset({"federated", "local"})),
    Engine("vectorized", "in this process, a round's hospitals as one batched computation",
           frozenset({"federated", "local"}), cannot=_vectorized_cannot, avoided=_vectorized_avoided),
    Engine("deployment", "Flower's deployment engine: a running SuperLink and a SuperNode per hospital",
           frozenset({"federated"})),
)}
WHEN_NEEDED = ("simulation",)            # auto picks these only for a job that needs them (Ray's start-up)
IN_PROCESS = ("vectorized", "inline")    # else the first of these that runs the job


def vectorized_refusal(job: Any) -> str | None:
    """Why the vectorized engine cannot run `job`, naming the engine that can; None when it can."""
    return ENGINES["vectorized"].cannot(job)


def refusal(job: Any) -> str | None:
    """Why the engine `job` names cannot run it ("federated.engine: ..."); None when it can (or auto)."""
    engine = ENGINES.get(job.federated.engine)
    if engine is None:
        return None
    if job.kind not in engine.kinds:
        return (f"federated.engine: kind {job.kind} trains each hospital alone in this process; engine "
                f"'{engine.name}' is for federated jobs (leave it auto)")
    why = engine.cannot(job)
    return f"federated.engine: {engine.name} {why}" if why is not None else None


def choose_engine(job: Any) -> tuple[str, str]:
    """(the engine that runs `job`, why): `federated.engine` unless it is auto."""
    fed = job.federated
    if fed.engine != "auto":
        return fed.engine, "federated.engine set in the config"
    for name in WHEN_NEEDED:
        if (reason := ENGINES[name].needed(job)) is not None:
            return name, reason
    passed_over: list[tuple[str, str]] = []
    for name in IN_PROCESS:
        engine = ENGINES[name]
        why_not = engine.cannot(job) or engine.avoided(job)
        if why_not is None:
            how = ("the round's hospitals train in this process as one batched computation, no Ray start-up"
                   if name == "vectorized" else "hospitals in this process one after another, no Ray start-up")
            skipped = "".join(f" (not {n}: {w.split(':')[0]})" for n, w in passed_over)
            return name, f"one machine serves this job: {how}{skipped}"
        passed_over.append((name, why_not))
    raise AssertionError("the inline engine runs every job")   # pragma: no cover
