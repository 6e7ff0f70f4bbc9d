"""`ray:` and `checkpoint:` where a cluster job runs and how often it saves itself."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec

_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})$")


class RaySpec(Spec):
    address: str | None = Field(None, description=(
        "null: start a local runtime; \"auto\" or host:port (or ray://host:port): join a cluster (a ray job's "
        "workers, or a federated simulation's hospital actors, placed over its nodes; each node needs "
        "Consortium's packages, never another hospital's data)"))
    num_workers: Annotated[int, Field(ge=1, description="Ray Train workers (DDP ranks)")] = 2
    use_gpu: bool = Field(False, description="one GPU per worker")
    resources_per_worker: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="e.g. {CPU: 2, GPU: 1}")
    max_failures: Annotated[int, Field(ge=0, description=(
        "worker/node failures survived by restoring the last checkpoint"))] = 2
    mixed_precision: bool = Field(False, description="bf16 autocast on GPU (needs use_gpu)")

    @model_validator(mode="after")
    def _check(self) -> RaySpec:
        if self.address is not None and not _ADDRESS.match(self.address):
            raise ValueError(f"address: expected null, 'auto' or host:port such as 127.0.0.1:6379 (got {self.address!r})")
        if self.mixed_precision and not self.use_gpu:
            raise ValueError("mixed_precision: autocast needs ray.use_gpu: true")
        return self


class CheckpointSpec(Spec):
    every_epochs: Annotated[int, Field(ge=1, description="ray: checkpoint every N epochs")] = 1
    keep: Annotated[int, Field(ge=1, description="checkpoints kept")] = 2
