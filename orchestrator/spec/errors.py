"""User-facing errors: each carries every problem found, with the key or file it concerns."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us (exit code 2, no traceback)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def __reduce__(self):   # pickled whole (a Ray worker's error reaches the driver as it was raised)
        return (type(self), (self.source, self.problems))

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source} has {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class ConfigError(UserError):
    """The YAML or an override is malformed or does not match the job spec."""


class DataError(UserError):
    """A data file or the data-dependent part of the spec cannot work."""


class Problems(ValueError):
    """Every problem the job spec's cross-section checks found, raised once (as torchtune's config
    validation does): `spec.loading` reports each as a line of its own."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
