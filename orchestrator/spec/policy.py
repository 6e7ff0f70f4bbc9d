"""A hospital's site policy: a YAML file its IT team owns, read at the hospital, never sent by the
coordinator (`consortium federation supernode --policy FILE`; in simulation a folder per simulated
hospital, `federated.sites`). `clients.site` enforces it on every message the hospital answers.

    allow:    which job kinds, strategies and model families may run here; the most rounds per run
    privacy:  DP required (local, central or either), the largest epsilon one run may spend, and a
              total epsilon budget per dataset across every run and sweep trial (the ledger)
    min_count k: anything counted that leaves (category value counts, label counts, observed cells)
              holds at least k patients, or is merged into `other` / withheld; a split of fewer
              than k rows refuses the run
    share:    whether personal models, explanations and synthetic rows (a GAN's generator) may leave
    trust:    the app publishers Flower verifies (its --trusted-entities) and the SuperLink's
              certificate fingerprint this hospital dials
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from orchestrator.spec.base import Spec
from orchestrator.spec.errors import ConfigError


class AllowSpec(Spec):
    kinds: list[str] | None = Field(None, description="job kinds this hospital takes part in (null: any)")
    strategies: list[str] | None = Field(None, description="federated.strategy.name values allowed (null: any)")
    models: list[str] | None = Field(None, description="model families (model.name) allowed (null: any)")
    max_rounds: Annotated[int, Field(ge=1)] | None = Field(None, description="the most rounds one run may ask for")


class PrivacySpec(Spec):
    dp: Literal["optional", "required", "local", "central"] = Field("optional", description=(
        "optional | required (local or central) | local (DP-SGD here) | central (the server's noise)"))
    max_epsilon_per_run: Annotated[float, Field(gt=0.0)] | None = Field(None, description=(
        "the most one run may spend, projected over all its rounds before it starts"))
    epsilon_budget: Annotated[float, Field(gt=0.0)] | None = Field(None, description=(
        "the total per dataset across all runs, sweep trials and resumed runs (the ledger composes them)"))
    delta: Annotated[float, Field(gt=0.0, lt=1.0, description="the delta the ledger reports epsilon at")] = 1e-5


class ShareSpec(Spec):
    personal_models: bool = Field(False, description="may a personal model's weights leave (personalize.share_models)")
    explanations: bool = Field(True, description="may attributions of the final model on own test rows leave")
    synthetic: bool = Field(True, description="may a generator of synthetic rows (model.name: gan) be trained here")


class TrustSpec(Spec):
    publishers: str | None = Field(None, description=(
        "Flower's --trusted-entities YAML (public key id -> ssh-ed25519 key): only FABs they signed run"))
    superlink_sha256: str | None = Field(None, description=(
        "the SHA-256 fingerprint of the SuperLink's TLS certificate this hospital may dial (hex, colons optional)"))


class AuditSpec(Spec):
    keep_payloads: bool = Field(False, description=(
        "keep a copy of every message sent (site/payloads/SHA256): what the ethics board can open"))


class SitePolicy(Spec):
    hospital: str | None = Field(None, description="this hospital's name in its refusals (default: its data's name)")
    dataset: str | None = Field(None, description="the ledger's name for this hospital's data (default: its path)")
    allow: AllowSpec = Field(default_factory=lambda: AllowSpec.model_validate({}))
    privacy: PrivacySpec = Field(default_factory=lambda: PrivacySpec.model_validate({}))
    min_count: Annotated[int, Field(ge=1, description="k: counts held by fewer patients never leave")] = 1
    share: ShareSpec = Field(default_factory=lambda: ShareSpec.model_validate({}))
    trust: TrustSpec = Field(default_factory=lambda: TrustSpec.model_validate({}))
    audit: AuditSpec = Field(default_factory=lambda: AuditSpec.model_validate({}))

    def digest(self) -> str:
        """What the server records of this policy: a fingerprint of its content, never the content."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def load_policy(path: str | Path) -> SitePolicy:
    """The policy in `path`; a mistake is a ConfigError naming the file and the key."""
    from orchestrator.spec.loading import problems_of, read_yaml

    raw = read_yaml(path)
    try:
        return SitePolicy.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(str(path), problems_of(exc)) from None
