"""Who holds what in a job: the agreed schema, the hospitals and their sizes, and the rows the server
may see (`jobs.plan.plan_data` makes one from the data, `plan_from_census` from the hospitals' counts
in a deployment). Plain data: the runners, the report and the hospitals' side all read it."""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.data import Schema, Split


@dataclass
class DataPlan:
    schema: Schema
    hospitals: list[str]                  # names, in partition-id order
    hospital_sizes: list[int]             # rows each hospital holds (train + test)
    central: Split | None                 # server-side held-out set (single-source data), imputed
    centralized: Split | None = None      # pooled train/test for kind: centralized, imputed
    notes: dict = field(default_factory=dict)
    partition_ids: list[int] | None = None  # of each hospital, where not 0..n-1 (a deployment missing one)

    def pids(self) -> list[int]:
        return self.partition_ids if self.partition_ids is not None else list(range(len(self.hospitals)))

    @property
    def num_features(self) -> int:
        return len(self.schema.features)

    @property
    def num_classes(self) -> int:
        return len(self.schema.classes)

    @property
    def regression(self) -> bool:
        return self.schema.regression

    @property
    def task(self) -> str:
        return self.schema.task
