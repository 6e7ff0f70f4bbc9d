"""The hospital's own controls around every message it answers (`guard`, a Flower ClientApp mod):
its site policy (`orchestrator.spec.policy`), its privacy ledger (`clients.ledger`) and its audit
log (`clients.audit`), in its site directory, never configured by the coordinator.

    deployment  the SuperNode's node config: `site-dir` (always: STATE/site) and `policy` (its
                --policy file); whatever the job says about sites is ignored
    simulation  federated.sites: a folder standing for the hospitals' own disks, SITES/NAME/ holding
                that hospital's ledger and log, and its policy.yaml (or SITES/policy.yaml for all)

For each message: the incoming one is logged; a job the policy forbids is refused with a reason
the server records ("hospital riverside refuses: ..."); the reply's counts are held to the
policy's k (merged into `other` or withheld) and a split of fewer than k rows refuses; a DP release
is written to the ledger before the reply leaves; the reply (or refusal) is logged, and train and
evaluate replies carry a `site` record: the policy's digest and the epsilon spent.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message

from clients import audit
from clients.counts import withhold
from clients.ledger import Ledger, Release, epsilon
from orchestrator.core import protocol as P
from orchestrator.spec.job import JobSpec
from orchestrator.spec.policy import SitePolicy, load_policy

REFUSED = 4403   # the error code of a refusal (Flower's Error carries a code and the reason)


class Refused(Exception):
    """The hospital's policy refuses this message; the text is the reason the server records."""


@dataclass
class Site:
    folder: Path
    name: str
    dataset: str
    policy: SitePolicy | None
    notes: list[str] = field(default_factory=list)   # what the k filter did to this reply

    @property
    def k(self) -> int:
        return self.policy.min_count if self.policy else 1

    @property
    def digest(self) -> str:
        return self.policy.digest() if self.policy else "none"

    def refuse(self, why: str) -> Refused:
        return Refused(f"hospital {self.name} refuses: {why} (policy {self.digest})")


@lru_cache(maxsize=8)
def _job(text: str) -> JobSpec:
    return JobSpec.model_validate_json(text)


@lru_cache(maxsize=8)
def _policy(path: str, mtime_ns: int) -> SitePolicy:
    return load_policy(path)


def _read_policy(path: Path) -> SitePolicy | None:
    return _policy(str(path), path.stat().st_mtime_ns) if path.is_file() else None


def locate(message: Message, context: Context) -> Site | None:
    """This hospital's site (None: a simulation without federated.sites keeps no site records)."""
    from orchestrator.core.splits import hospital_name

    cfg = message.content.config_records.get(P.CONFIG)
    node = context.node_config
    if P.SITE_DIR in node:   # deployment: the hospital's own settings only
        data = str(node.get(P.DATA_PATH) or "")
        policy = None
        if node.get(P.POLICY):
            policy = _read_policy(Path(str(node[P.POLICY])))
            if policy is None:
                raise RuntimeError(f"the site policy {node[P.POLICY]} is gone: this hospital answers nothing without it")
        name = (policy and policy.hospital) or (hospital_name(Path(data).stem) if data else str(node[P.PARTITION_ID]))
        dataset = (policy and policy.dataset) or data or f"partition {node[P.PARTITION_ID]}"
        return Site(Path(str(node[P.SITE_DIR])), name, dataset, policy)
    if cfg is None or P.JOB not in cfg or P.SCHEMA not in cfg:
        return None
    job = _job(str(cfg[P.JOB]))
    if not job.federated.sites:
        return None
    from clients.handlers import _hospital

    name = _hospital(message, context).name
    root = Path(job.federated.sites)
    policy = _read_policy(root / name / "policy.yaml") or _read_policy(root / "policy.yaml")
    dataset = (policy and policy.dataset) or f"{job.data.source}:{job.data.path or ''}:{name}"
    return Site(root / name, (policy and policy.hospital) or name, dataset, policy)


def guard(message: Message, context: Context, call_next) -> Message:
    """Flower ClientApp mod: the hospital's policy, ledger and audit log around `call_next`."""
    site = locate(message, context)
    if site is None:
        return call_next(message, context)
    log = site.folder / "audit.jsonl"
    head = _head(site, message)
    audit.append(log, {**head, "direction": "in", **_payload(message, site, keep=False)})
    try:
        job = _job(str(message.content[P.CONFIG][P.JOB])) if _has_job(message) else None
        if job is not None:
            check(site, job, message, context)
        reply = call_next(message, context)
        spent = None
        if not reply.has_error():
            withhold(site, reply)
            if job is not None and message.metadata.message_type == "train":
                spent = spend(site, job, message, context)
            if message.metadata.message_type in ("train", "evaluate") and job is not None:
                reply.content[P.SITE] = ConfigRecord(_site_record(site, spent))
    except Refused as exc:
        print(f"[consortium] {exc}", file=sys.stderr, flush=True)   # the hospital's own log
        reply = Message(Error(code=REFUSED, reason=str(exc)), reply_to=message)
        audit.append(log, {**head, "direction": "out", "refused": str(exc), **_payload(reply, site)})
        return reply
    notes = [f"k={site.k}: " + ", ".join(site.notes)] if site.notes else []
    entry = {**head, "direction": "out", **_payload(reply, site), "k": site.k, "what": _what(reply) + notes}
    if spent is not None:
        entry["epsilon"] = spent
    audit.append(log, entry)
    return reply


def _has_job(message: Message) -> bool:
    cfg = message.content.config_records.get(P.CONFIG)
    return cfg is not None and P.JOB in cfg


def _round(message: Message) -> int:
    cfg = message.content.config_records.get(P.CONFIG) if message.has_content() else None
    return int(str(cfg[P.SERVER_ROUND])) if cfg is not None and P.SERVER_ROUND in cfg else 0


def _run(message: Message) -> str:
    cfg = message.content.config_records.get(P.CONFIG)
    return str(cfg[P.RUN]) if cfg is not None and P.RUN in cfg else f"flower-{message.metadata.run_id}"


def _kind(message: Message) -> str:
    """The message type in the words of the report: train, evaluate, census, describe, attribute, personalize."""
    kind = message.metadata.message_type
    cfg = message.content.config_records.get(P.CONFIG) if message.has_content() else None
    if kind.startswith("query") and cfg is not None:
        for key, word in ((P.ATTRIBUTE, "attribute"), (P.PERSONALIZE, "personalize")):
            if key in cfg:
                return word
        return "census" if P.SCHEMA in cfg else "describe"
    return kind.split(".")[0]


def _head(site: Site, message: Message) -> dict:
    job = _job(str(message.content[P.CONFIG][P.JOB])).name if _has_job(message) else None
    return {"run": _run(message), "flower_run": message.metadata.run_id, "round": _round(message),
            "type": _kind(message), "hospital": site.name, "policy": site.digest, "job": job}


def _payload(message: Message, site: Site, keep: bool | None = None) -> dict:
    """The record names and keys, the byte size and SHA-256 of what travels: Flower's objects of
    the content, the same bytes its gRPC messages carry (a refusal: its reason)."""
    if not message.has_content():
        text = str(message.error.reason).encode()
        import hashlib

        return {"records": {}, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    from orchestrator.adapters.flower import wire_objects

    content = message.content
    sha, blobs = wire_objects(content)
    if (site.policy is not None and site.policy.audit.keep_payloads) if keep is None else keep:
        store = site.folder / "payloads"
        store.mkdir(parents=True, exist_ok=True)
        (store / sha).write_bytes(b"".join(blobs))
    return {"records": {name: sorted(map(str, record.keys())) for name, record in content.items()},
            "bytes": sum(map(len, blobs)), "sha256": sha}


def _what(reply: Message) -> list[str]:
    """What a reply carries, in words (the audit report's lines)."""
    out = []
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            values = sum(int(np.prod(a.shape)) for a in record.values())
            out.append(f"{name}: {len(record)} arrays, {values:,} numbers")
        elif isinstance(record, ConfigRecord):
            parts = []
            for key, value in record.items():
                if isinstance(value, list):
                    parts.append(f"{key} ({len(value)} numbers)")
                elif key == "description":
                    d = json.loads(str(value))
                    parts.append(f"description of its data: {len(d.get('features', []))} column names, "
                                 f"label values, row counts, observed cells, "
                                 f"{sum(len(v) for v in d.get('categories', {}).values())} category values with counts")
                else:
                    parts.append(f"{key}={value:.4g}" if isinstance(value, float) else key + "=" + str(value))
            out.append(f"{name}: " + ", ".join(parts))
        else:
            out.append(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in record.items()))
    return out


# --- the policy -------------------------------------------------------------------------------

def check(site: Site, job: JobSpec, message: Message, context: Context) -> None:
    """Raise Refused when the policy forbids what `message` asks of this hospital."""
    policy, kind = site.policy, _kind(message)
    if policy is None or kind in ("census", "describe"):
        return   # the census (counts held to k) is answered: the run's plan stays whole
    if kind == "attribute" and not policy.share.explanations:
        raise site.refuse("its policy keeps explanations of the model on its rows at the hospital (share.explanations: false)")
    if problem := forbidden(policy, job):
        raise site.refuse(problem)
    if kind in ("train", "evaluate") and job.federated.dp is not None and (
            policy.privacy.max_epsilon_per_run or policy.privacy.epsilon_budget):
        _check_budget(site, job, message, context)


def forbidden(policy: SitePolicy, job: JobSpec) -> str | None:
    """What in `job` the policy forbids, in words (None: nothing)."""
    allow, fed = policy.allow, job.federated
    for what, value, allowed in (("job kind", job.kind, allow.kinds),
                                 ("strategy", fed.strategy.name, allow.strategies),
                                 ("model family", job.model.name, allow.models)):
        if allowed is not None and value not in allowed:
            return f"{what} {value} is not allowed by its policy (allowed: {', '.join(allowed) or 'none'})"
    if allow.max_rounds is not None and fed.rounds > allow.max_rounds:
        return f"{fed.rounds} rounds is more than its policy's {allow.max_rounds} per run"
    need = policy.privacy.dp
    if need != "optional":
        mode = fed.dp.mode if fed.dp is not None else None
        if mode is None or (need in ("local", "central") and mode != need):
            return (f"its policy requires {'differential privacy' if need == 'required' else need + ' DP'} "
                    f"(federated.dp.mode: {mode or 'none'})")
    if fed.personalize is not None and fed.personalize.share_models and not policy.share.personal_models:
        return "its policy keeps personal models at the hospital (federated.personalize.share_models: true asks for them)"
    if job.model.name == "gan" and not policy.share.synthetic:
        return "its policy lets no generator of synthetic rows leave (model.name: gan)"
    return None   # a budget alone does not require DP: a run without DP spends nothing it accounts


def releases_per_round(job: JobSpec, rows: int) -> Release:
    """The Gaussian mechanism one round of this job applies to this hospital's data."""
    dp = job.federated.dp
    assert dp is not None
    if dp.mode == "local":
        from clients.privacy import steps_per_round

        return Release(dp.noise_multiplier, min(1.0, job.train.batch_size / max(rows, 1)),
                       steps_per_round(rows, job.train.batch_size, job.train.epochs))
    return Release(dp.noise_multiplier, 1.0, 1)


def _release(job: JobSpec, message: Message, context: Context) -> Release:
    """This round's mechanism at this hospital (its training rows set local DP's sampling rate)."""
    from clients.handlers import _hospital

    return releases_per_round(job, len(_hospital(message, context).raw.y_train))


def _check_budget(site: Site, job: JobSpec, message: Message, context: Context) -> None:
    assert site.policy is not None
    privacy = site.policy.privacy
    release, run = _release(job, message, context), _run(message)
    ledger = Ledger(site.folder / "ledger.db")
    try:
        done = ledger.rounds(site.dataset, run)
        to_come = [release] * max(0, job.federated.rounds - len(done))
        earlier = ledger.releases(site.dataset)
        this_run = epsilon(ledger.releases(site.dataset, run) + to_come, privacy.delta)
    finally:
        ledger.close()
    spent, total = epsilon(earlier, privacy.delta), epsilon(earlier + to_come, privacy.delta)
    if privacy.max_epsilon_per_run is not None and this_run > privacy.max_epsilon_per_run + 1e-9:
        raise site.refuse(f"epsilon {this_run:.3g} for this run would pass its limit of "
                          f"{privacy.max_epsilon_per_run:g} per run")
    if privacy.epsilon_budget is not None and total > privacy.epsilon_budget + 1e-9:
        raise site.refuse(f"epsilon {this_run:.3g} for this run would pass its budget {privacy.epsilon_budget:g} "
                          f"({spent:.3g} spent) for dataset {site.dataset}")


def spend(site: Site, job: JobSpec, message: Message, context: Context) -> dict | None:
    """A DP round's release, on the ledger's disk before its reply leaves; what the log records of it."""
    dp = job.federated.dp
    if dp is None:
        return None
    delta = site.policy.privacy.delta if site.policy else 1e-5
    release, run = _release(job, message, context), _run(message)
    ledger = Ledger(site.folder / "ledger.db")
    try:
        ledger.record(site.dataset, run, job.name, dp.mode, _round(message), release)
        mine = epsilon(ledger.releases(site.dataset, run), delta)
        total = epsilon(ledger.releases(site.dataset), delta)
    finally:
        ledger.close()
    budget = site.policy.privacy.epsilon_budget if site.policy else None
    return {"run": mine, "total": total, "delta": delta, "dataset": site.dataset, "budget": budget}


def _site_record(site: Site, spent: dict | None) -> dict:
    record: dict = {"policy": site.digest, "k": site.k}
    if spent is not None:
        record.update({"epsilon_run": float(spent["run"]), "epsilon_dataset": float(spent["total"])})
    return record


__all__ = ["Refused", "Site", "check", "forbidden", "guard", "locate"]
