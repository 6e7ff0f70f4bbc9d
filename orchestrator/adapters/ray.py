"""Ray 2.55's private API, in one room (see `orchestrator.adapters`).

Ray pins a local runtime to the loopback address unless `ENABLE_RAY_CLUSTER` (read once from the
environment into `ray._private.ray_constants` when ray is imported) says otherwise. A local runtime
keeps it off; a cluster's nodes reach each other by routable address, so joining one turns it on.
"""
from __future__ import annotations

import os
import sys
from typing import Any

WRITTEN_FOR = ("ray", "2.55.1")
_CONSTANTS = "ray._private.ray_constants"
_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_addressing(enabled: bool) -> None:
    """Ray's cluster addressing on or off in this process, imported already or not. Off is also
    set in the environment, which the local runtime's processes inherit; on is this driver's only
    (it joins a cluster whose processes are already running)."""
    if not enabled:
        os.environ[_ENV] = "0"
    constants: Any = sys.modules.get(_CONSTANTS)
    if constants is None and enabled:
        from ray._private import ray_constants as constants
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = enabled
