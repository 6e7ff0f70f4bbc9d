"""What a tracking call hands back, in a module without MLflow: the tracking process
(`tracking.sidecar`) sends these to a job that never imports MLflow itself."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelRecord:
    model_uri: str | None    # None: nothing was logged (tracking.enabled: false)
    registered_name: str | None = None
    version: str | None = None

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.version else None
