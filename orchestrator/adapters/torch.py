"""torch 2.13's private API, in one room (see `orchestrator.adapters`).

`warm_export`: MLflow's model export (`torch.export`) imports `torch.export._trace` and with it
`torch._dynamo` (~1.5 s); a Ray driver that waits on its workers imports it ahead, in a thread.
"""
from __future__ import annotations

WRITTEN_FOR = ("torch", "2.13.0")


def warm_export() -> None:
    import torch.export._trace  # noqa: F401
