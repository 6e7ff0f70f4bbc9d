"""The hospital's audit log: every message it received and sent, append-only and hash-chained
(`site/audit.jsonl`, one JSON object a line).

An entry holds its sequence number, the time, the run, the round, the direction, the message type,
the record names and keys, the payload's byte size and SHA-256 (Flower's object id of the content:
a hash over every byte of it), what was sent in words (`what`), and `prev`, the hash of the entry
before it; `hash` covers all of that. `verify` recomputes the chain: an entry changed, removed or
moved breaks it where it happened; `audit.head` (the last entry's number and hash, rewritten with
each append) finds entries cut off the end. `report` tells the ethics board what left in one run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

GENESIS = "0" * 64


def _digest(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _last(path: Path) -> dict | None:
    """The last entry of the log (read from its end: the log grows for as long as the hospital lives)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size, block, tail = f.tell(), 4096, b""
        while size > 0 and tail.count(b"\n") < 2:
            step = min(block, size)
            size -= step
            f.seek(size)
            tail = f.read(step) + tail
    lines = [line for line in tail.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def append(path: Path, entry: dict) -> dict:
    """Add `entry` at the end of the chain, on disk before this returns; the entry as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f"{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two simulated runs (a sweep's trials) may write one hospital's log
        last = _last(path) if path.exists() else None
        entry = {"seq": 0 if last is None else last["seq"] + 1, "time": round(time.time(), 6), **entry,
                 "prev": GENESIS if last is None else last["hash"]}
        entry["hash"] = _digest(entry)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        head = path.with_suffix(".head")
        tmp = head.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}))
        os.replace(tmp, head)
    return entry


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verify(path: Path) -> tuple[int, list[str]]:
    """(entries checked, problems): each problem names the entry where the chain breaks and how."""
    if not path.is_file():
        return 0, [f"{path}: no audit log here"]
    problems: list[str] = []
    prev, expected, n = GENESIS, 0, 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        n += 1
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"line {lineno}: not a JSON entry (the log was edited)")
            continue
        seq = entry.get("seq")
        if entry.get("hash") != _digest(entry):
            problems.append(f"line {lineno} (entry {seq}): its content does not match its hash (the entry was changed)")
        if seq != expected:
            how = "removed" if isinstance(seq, int) and seq > expected else "reordered or duplicated"
            problems.append(f"line {lineno}: entry {seq} where entry {expected} belongs (entries were {how})")
        elif entry.get("prev") != prev:
            problems.append(f"line {lineno} (entry {seq}): does not follow the entry before it (an entry was "
                            "changed, removed or moved)")
        prev = entry.get("hash", "")
        expected = (seq if isinstance(seq, int) else expected) + 1
    head = path.with_suffix(".head")
    if head.is_file():
        last = json.loads(head.read_text())
        if last["seq"] >= expected or (last["seq"] == expected - 1 and last["hash"] != prev):
            problems.append(f"the log ends at entry {expected - 1}, but entry {last['seq']} was written "
                            "(entries were cut off its end)")
    return n, problems


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def report(path: Path, run: str) -> str:
    """What this hospital received and sent in `run` (an MLflow or Flower run id), in words."""
    found = [e for e in entries(path) if run in (e.get("run"), str(e.get("flower_run")))]
    if not found:
        runs = sorted({str(e.get("run")) for e in entries(path)} - {"None", ""})
        return f"no entry of run {run} in {path} (runs logged here: {', '.join(runs[-10:]) or 'none'})"
    first = found[0]
    received = [e for e in found if e["direction"] == "in"]
    sent = [e for e in found if e["direction"] == "out"]
    refused = [e for e in sent if e.get("refused")]
    lines = [f"Run {first.get('run')} (job {first.get('job') or '?'}, Flower run {first.get('flower_run')}) at "
             f"hospital {first.get('hospital') or '?'}, policy {first.get('policy') or 'none'}",
             f"  received {len(received)} messages, {_size(sum(e['bytes'] for e in received))}: "
             + ", ".join(f"{n} {t}" for t, n in sorted(Counter(e['type'] for e in received).items())),
             f"  sent {len(sent)} messages, {_size(sum(e['bytes'] for e in sent))} "
             f"({len(refused)} of them refusals); each one:"]
    for e in sent:
        what = e.get("refused") and f"REFUSED: {e['refused']}" or "; ".join(e.get("what", []))
        lines.append(f"    round {e.get('round', 0):>3}  {e['type']:<10} {_size(e['bytes']):>9}  "
                     f"sha256 {e['sha256'][:12]}  {what}")
    eps = [e["epsilon"] for e in sent if e.get("epsilon")]
    if eps:
        last = eps[-1]
        lines.append(f"  privacy: epsilon {last['run']:.3g} spent in this run (delta {last['delta']:g}); "
                     f"dataset {last['dataset']} at {last['total']:.3g} after it"
                     + (f" of its budget {last['budget']:g}" if last.get("budget") else ""))
    else:
        lines.append("  privacy: no differentially private release in this run (nothing was noised here)")
    ks = sorted({e["k"] for e in sent if e.get("k", 1) > 1})
    lines.append(f"  counts: every count sent held at least k={ks[-1]} patients" if ks else
                 "  counts: no minimum count (k) applied")
    return "\n".join(lines)
