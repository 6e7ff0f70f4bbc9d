"""Consortium: federated and distributed deep learning from one YAML file, tracked in MLflow.

    from orchestrator import run, validate
    result = run("configs/hospitals_fedavg.yaml", overrides=["federated.rounds=5"])

(imported on first use: `consortium --help` does not pay for torch or MLflow)
"""
from __future__ import annotations

__all__ = ["run", "validate", "RunResult", "UserError", "ConfigError", "DataError"]


def __getattr__(name: str):
    if name in __all__:
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
