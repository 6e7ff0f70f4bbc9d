"""Round 0: every hospital reports aggregates of its own rows, never the rows themselves."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from orchestrator.core.models import mean_scale
from orchestrator.core.protocol import CONFIG, LABELS, METRICS, PARTITION_ID, STATS


def wait_for_nodes(grid: Grid, n: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} hospitals connected within {timeout:.0f}s")
        time.sleep(0.02)
    return nodes


@dataclass
class Census:
    mean: np.ndarray
    scale: np.ndarray
    labels: np.ndarray          # hospitals x classes, training rows
    target: np.ndarray          # regression: (count, sum, sum of squares) of the training targets
    nodes: list[int]            # node id of each hospital, in partition-id order


def census(grid: Grid, nodes: list[int], config: ConfigRecord, dim: int, num_classes: int,
           pids: list[int], channels: int | None = None) -> Census:
    """Ask every hospital for aggregates only: per-feature sums (-> the consortium's feature mean
    and standard deviation), its training-label histogram (-> the partition plot, balanced class
    weights) or, for a regression, its target's sums (-> the output scaling)."""
    messages = [Message(content=RecordDict({CONFIG: config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    totals = np.zeros((3, dim))
    target = np.zeros(3)
    row = {pid: i for i, pid in enumerate(pids)}  # the plan's hospitals, in partition-id order
    labels = np.zeros((len(pids), num_classes), dtype=np.int64)
    failures = []
    by_pid: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=600):
        if reply.has_error():
            failures.append(str(reply.error.reason))
            continue
        arrays = reply.content[STATS].to_numpy_ndarrays()
        totals += np.stack(arrays[:3])
        if len(arrays) > 3:
            target += arrays[3]
        pid = int(reply.content[METRICS][PARTITION_ID])
        by_pid[pid] = reply.metadata.src_node_id
        if pid in row and num_classes:
            labels[row[pid]] = reply.content[LABELS]["train"]
    if failures:
        raise RuntimeError(f"{len(failures)} hospital(s) failed the census query: "
                           + "; ".join(f.strip().splitlines()[0][:400] for f in failures))
    mean, scale = mean_scale(totals[0], totals[1], totals[2], channels=channels)   # images: per channel
    return Census(mean, scale, labels, target, [by_pid[p] for p in sorted(by_pid)])


def describe_census(grid: Grid, nodes: list[int], job_json: str, timeout: float, run_id: str = "") -> dict[int, dict]:
    """Deployment's round 0a: before any schema exists, every hospital says what its data is
    (`clients.hospitals.describe_share`); partition id -> its description. A hospital whose data
    cannot work is named in the DataError, with its own words about its file."""
    import json

    from orchestrator.core.protocol import DESCRIPTION, JOB, RUN
    from orchestrator.spec.errors import DataError

    config = ConfigRecord({JOB: job_json, RUN: run_id} if run_id else {JOB: job_json})
    messages = [Message(content=RecordDict({CONFIG: config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    found: dict[int, dict] = {}
    problems: list[str] = []
    failed: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            failed.append(f"node {reply.metadata.src_node_id}: {reply.error.reason.strip().splitlines()[-1][:300]}")
            continue
        pid = int(reply.content[METRICS][PARTITION_ID])
        d = reply.content[DESCRIPTION]
        if "description" in d:
            if pid in found:
                problems.append(f"two SuperNodes answer as partition-id {pid} ({found[pid]['name']} and "
                                f"{json.loads(str(d['description']))['name']}): give each its own partition-id")
            found[pid] = json.loads(str(d["description"]))
        else:
            problems += [f"hospital {d['name']}: {d['source']}: {p}" for p in json.loads(str(d["problems"]))]
    if problems:
        raise DataError("the hospitals' census", problems)
    if failed:
        raise RuntimeError(f"{len(failed)} hospital(s) failed the census query: {'; '.join(failed)}")
    if not found:
        raise RuntimeError("no hospital answered the census query")
    return found


def hospital_attributions(grid: Grid, nodes: list[int], config: ConfigRecord, arrays,
                          timeout: float) -> tuple[np.ndarray, int, int] | None:
    """After the last round, with no central split: each hospital attributes the final model on
    its own test rows (integrated gradients) and sends back only the mean per input; the mean over
    hospitals weighted by their rows, the rows, and how many hospitals answered."""
    from orchestrator.core.protocol import ARRAYS, ATTRIBUTE, NUM_EXAMPLES

    asked = ConfigRecord(dict(config))
    asked[ATTRIBUTE] = 1
    messages = [Message(content=RecordDict({CONFIG: asked, ARRAYS: arrays}), message_type=MessageType.QUERY,
                        dst_node_id=n) for n in nodes]
    total, rows, answered = None, 0, 0
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        values = reply.content[STATS].to_numpy_ndarrays()[0]
        n = int(reply.content[METRICS][NUM_EXAMPLES])
        total = values * n if total is None else total + values * n
        rows, answered = rows + n, answered + 1
    return (total / rows, rows, answered) if rows else None
