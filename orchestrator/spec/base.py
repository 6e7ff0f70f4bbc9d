"""The base of every section model: unknown keys are errors, defaults are validated too."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """A typo in a YAML key is an error with a suggestion, never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
