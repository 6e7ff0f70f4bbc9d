"""`flower-supernode` with the heartbeat interval `CONSORTIUM_HEARTBEAT_S` names (10 to 1800 s; Flower's
own is 30 s): `python -m orchestrator.federation.supernode ARGV...` takes flower-supernode's arguments.

The SuperLink marks a SuperNode offline, and lets a restarted one back in, after two missed
heartbeats: 60 s with Flower's interval. The test suite runs its SuperNodes at 10 s (tests/conftest.py),
so a crashed hospital is back in 20 s; a site that wants its crashes noticed sooner can set it too,
at the price of a heartbeat request every few seconds. `federation.daemons` starts SuperNodes
through this module only when the variable is set.
"""
from __future__ import annotations

import os
import sys

HEARTBEAT_ENV = "CONSORTIUM_HEARTBEAT_S"


def main() -> None:
    from orchestrator.adapters.flower import heartbeat_every

    heartbeat_every(int(os.environ[HEARTBEAT_ENV]))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
