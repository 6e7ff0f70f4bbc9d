"""The job spec: one pydantic model per YAML section, unknown keys rejected.

These field names are the public interface of a Consortium YAML file. Every model forbids
extra keys, so a typo is an error with a suggestion, never a silently ignored setting.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED_DATASETS = ("breast_cancer", "digits", "wine")
JobKind = Literal["federated", "centralized", "ray"]
POOLED_KINDS = ("centralized", "ray")  # kinds that train one model on the pooled data


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataSpec(Spec):
    source: Literal["breast_cancer", "digits", "wine", "csv"] = "breast_cancer"
    path: str | None = None
    target: str = "target"
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    # Missing cells are filled per hospital from that hospital's own training rows.
    impute: Literal["median", "mean"] = "median"
    # Put an input-standardisation layer in front of the model (part of the logged model).
    standardize: bool = True

    @model_validator(mode="after")
    def _csv_needs_path(self) -> DataSpec:
        if self.source == "csv" and not self.path:
            raise ValueError("path: data.source 'csv' needs data.path (a CSV file or a directory of CSVs)")
        if self.source != "csv" and self.path:
            raise ValueError(f"path: only used with data.source 'csv' (source is '{self.source}')")
        return self


class ModelSpec(Spec):
    # cnn: a small conv net for square images given as flat pixel rows (digits: 8x8 = 64 columns)
    name: Literal["mlp", "logistic", "cnn"] = "mlp"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [16, 32])
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64])
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class OptimizerSpec(Spec):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: Annotated[float, Field(gt=0.0)] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0


class TrainSpec(Spec):
    loss: Literal["cross_entropy"] = "cross_entropy"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: Annotated[int, Field(gt=0)] = 32
    # centralized: epochs; federated: local epochs per round
    epochs: Annotated[int, Field(gt=0)] = 1


class PartitionSpec(Spec):
    name: Literal["iid", "dirichlet", "natural"] = "dirichlet"
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    # Every hospital gets at least this many rows (before its own train/test split).
    min_size: Annotated[int, Field(ge=2)] = 10


STRATEGY_OPTIONS = {  # which strategy uses which option (an option set for another strategy is an error)
    "fedavg": (), "fedmedian": (),
    "fedprox": ("mu",),
    "fedadam": ("server_lr", "tau", "beta1", "beta2"),
    "fedyogi": ("server_lr", "tau", "beta1", "beta2"),
    "fedadagrad": ("server_lr", "tau"),
    "trimmed_mean": ("beta",),
    "krum": ("f",),
    "multi_krum": ("f", "select"),
}


class StrategySpec(Spec):
    name: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "trimmed_mean", "krum",
                  "multi_krum"] = "fedavg"
    mu: Annotated[float, Field(ge=0.0)] = 0.01            # fedprox: weight of the proximal term
    server_lr: Annotated[float, Field(gt=0.0)] = 0.1      # fedadam/fedyogi/fedadagrad: server step (eta)
    tau: Annotated[float, Field(gt=0.0)] = 1e-3           # adaptivity (epsilon) of the server optimizer
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99
    beta: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.2   # trimmed_mean: fraction cut at each end
    f: Annotated[int, Field(ge=0)] = 0                    # krum/multi_krum: hospitals assumed malicious
    select: Annotated[int, Field(ge=1)] = 1               # multi_krum: updates averaged

    @model_validator(mode="after")
    def _options_belong_to_the_strategy(self) -> StrategySpec:
        # Compared with the defaults, not with what was typed: a dumped spec (sent to hospitals,
        # saved as resolved.yaml) carries every option and must load again.
        allowed = set(STRATEGY_OPTIONS[self.name])
        defaults = type(self).model_fields
        stray = sorted(k for k in self.model_fields_set - {"name"}
                       if k not in allowed and getattr(self, k) != defaults[k].default)
        if stray:
            users = {k: [n for n, opts in STRATEGY_OPTIONS.items() if k in opts] for k in stray}
            raise ValueError(f"{stray[0]}: not used by '{self.name}' (it belongs to {', '.join(users[stray[0]])})")
        return self


class ClientResources(Spec):
    num_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0.0)] = 0.0


class FederatedSpec(Spec):
    # null with a natural partition: one hospital per CSV file.
    num_clients: Annotated[int, Field(ge=1)] | None = 10
    rounds: Annotated[int, Field(ge=1)] = 20
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    fraction_fit: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    fraction_evaluate: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    client_resources: ClientResources = Field(default_factory=ClientResources)


_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})$")


class RaySpec(Spec):
    # null: start a local runtime; "auto" or host:port (or ray://host:port): connect to a cluster
    address: str | None = None
    num_workers: Annotated[int, Field(ge=1)] = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=lambda: {"CPU": 1.0})
    # worker/node failures survived by restoring the last checkpoint
    max_failures: Annotated[int, Field(ge=0)] = 2
    # bf16 autocast on GPU
    mixed_precision: bool = False

    @model_validator(mode="after")
    def _check(self) -> RaySpec:
        if self.address is not None and not _ADDRESS.match(self.address):
            raise ValueError(f"address: expected null, 'auto' or host:port such as 127.0.0.1:6379 (got {self.address!r})")
        if self.mixed_precision and not self.use_gpu:
            raise ValueError("mixed_precision: autocast needs ray.use_gpu: true")
        return self


class CheckpointSpec(Spec):
    every_epochs: Annotated[int, Field(ge=1)] = 1
    keep: Annotated[int, Field(ge=1)] = 2


class TrackingSpec(Spec):
    # null: a SQLite store ./mlruns.db (MLFLOW_TRACKING_URI wins when set)
    uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "consortium"
    register_model: str | None = None
    log_model: bool = True


class JobSpec(Spec):
    name: Annotated[str, Field(min_length=1)] = "job"
    kind: JobKind = "federated"
    seed: int = 42
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    federated: FederatedSpec = Field(default_factory=FederatedSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        part = self.federated.partition.name
        if self.kind == "federated":
            if part == "natural" and self.data.source != "csv":
                raise ValueError(
                    "federated.partition.name: 'natural' needs data.source 'csv' with data.path "
                    "a directory holding one CSV per hospital"
                )
            if part != "natural" and self.federated.num_clients is None:
                raise ValueError(f"federated.num_clients: required with partition '{part}'")
        if self.model.name == "cnn" and self.data.source not in ("digits", "csv"):
            raise ValueError("model.name: cnn needs image rows (data.source digits, or a csv of square images)")
        return self
