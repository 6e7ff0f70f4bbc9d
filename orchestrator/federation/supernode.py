"""`flower-supernode` as a hospital runs it: `python -m orchestrator.federation.supernode ARGV...` takes
flower-supernode's arguments (`federation.daemons` starts every SuperNode through this module).

Waiting. Flower 1.42's SuperNode asks the SuperLink for a message every 3 s while it has none, its
SuperExec looks for a task every 1 s, and the SuperNode looks for its ClientApp's reply every 0.5 s:
on a fast link those waits were most of a deployed round. Here all three wait `CONSORTIUM_POLL_S`
(default 0.25 s; `consortium federation supernode --poll-s`): a message is picked up within that
time of its arrival, at the price of that many small requests to the SuperLink while idle.

Heartbeat. With `CONSORTIUM_HEARTBEAT_S` set (10 to 1800 s; Flower's own is 30 s), the SuperNode
announces and sends heartbeats at that interval. The SuperLink marks a SuperNode offline, and lets
a restarted one back in, after two missed heartbeats: 60 s with Flower's interval. The test suite
runs its SuperNodes at 10 s (tests/conftest.py), so a crashed hospital is back in 20 s; a site that
wants its crashes noticed sooner can set it too, at the price of a heartbeat request every few seconds.
"""
from __future__ import annotations

import os
import sys

HEARTBEAT_ENV = "CONSORTIUM_HEARTBEAT_S"
POLL_ENV = "CONSORTIUM_POLL_S"
DEFAULT_POLL_S = 0.25
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own setting (0.01 to 60 s)


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0.01 <= seconds <= 10:
        raise SystemExit(f"{POLL_ENV}={raw!r}: expected seconds between 0.01 and 10")
    return seconds


def main() -> None:
    from orchestrator.adapters.flower import heartbeat_every, poll_every, prompt_object_pulls

    seconds = poll_seconds()
    poll_every(seconds)
    prompt_object_pulls()
    os.environ.setdefault(SUPEREXEC_POLL_ENV, f"{seconds:g}")  # the SuperExec it starts inherits it
    if os.environ.get(HEARTBEAT_ENV):
        heartbeat_every(int(os.environ[HEARTBEAT_ENV]))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
