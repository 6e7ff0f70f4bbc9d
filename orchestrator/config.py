"""The job spec: one pydantic model per YAML section, unknown keys rejected.

These field names are the public interface of a Consortium YAML file. Every model forbids
extra keys, so a typo is an error with a suggestion, never a silently ignored setting.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED_DATASETS = ("breast_cancer", "digits", "wine", "diabetes")
# Generated in-process from the seed (no download): xor (2 features), sequences (20 steps x 1).
GENERATED_DATASETS = ("xor", "sequences")
JobKind = Literal["federated", "centralized", "ray", "sweep"]
Head = Literal["softmax", "sigmoid", "linear"]
Loss = Literal["cross_entropy", "bce", "mse", "mae", "huber"]
# Which head each loss trains: classification (softmax), binary (sigmoid), regression (linear).
LOSS_HEAD = {"cross_entropy": "softmax", "bce": "sigmoid", "mse": "linear", "mae": "linear", "huber": "linear"}
HEAD_LOSS = {"softmax": "cross_entropy", "sigmoid": "bce", "linear": "mse"}
SEQUENCE_MODELS = ("rnn", "lstm", "gru", "transformer")
POOLED_KINDS = ("centralized", "ray", "sweep")  # kinds that train one model on the pooled data


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataSpec(Spec):
    source: Literal["breast_cancer", "digits", "wine", "diabetes", "xor", "sequences", "csv"] = "breast_cancer"
    path: str | None = None
    target: str = "target"
    # Keep only the rows of these classes (names as in the data, e.g. digits "0".."9").
    classes: list[str] | None = None
    # Rows generated for the xor / sequences sources.
    rows: Annotated[int, Field(ge=8)] = 600
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
    # rnn/lstm/gru/transformer: sequences given as flat rows of steps x input_size columns
    name: Literal["mlp", "logistic", "cnn", "rnn", "lstm", "gru", "transformer"] = "mlp"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [16, 32])
    # mlp: one entry per hidden layer; rnn/lstm/gru: hidden size per stacked layer;
    # transformer: model width (d_model) per encoder layer
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64])
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    batchnorm: bool = False
    # softmax: one output per class; sigmoid: one output, binary; linear: one output, regression
    head: Head = "softmax"
    input_size: Annotated[int, Field(ge=1)] = 1   # sequence models: features per time step
    heads: Annotated[int, Field(ge=1)] = 2        # transformer: attention heads
    # Transfer learning: start from a logged model (models:/NAME/VERSION, runs:/RUN_ID/model);
    # layers whose names and shapes match are copied, the rest start fresh.
    init_from: str | None = None
    # Parameter name prefixes to keep fixed while training, e.g. [input, body] to tune only the head.
    freeze: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.name in ("rnn", "lstm", "gru", "transformer") and len(set(self.hidden)) > 1:
            raise ValueError(f"hidden: stacked {self.name} layers share one width (got {self.hidden})")
        if self.name == "transformer" and self.hidden[0] % self.heads:
            raise ValueError(f"heads: the transformer width hidden[0]={self.hidden[0]} must divide by heads={self.heads}")
        if self.init_from is not None and not re.match(r"^(models|runs):/.+", self.init_from):
            raise ValueError(f"init_from: expected models:/NAME/VERSION or runs:/RUN_ID/model (got {self.init_from!r})")
        return self


class OptimizerSpec(Spec):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: Annotated[float, Field(gt=0.0)] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: needs optimizer.name sgd with momentum > 0")
        if self.momentum and self.name not in ("sgd", "rmsprop"):
            raise ValueError(f"momentum: not used by '{self.name}' (sgd and rmsprop take it; adam has betas)")
        return self


class ScheduleSpec(Spec):
    """Learning-rate schedule, stepped once per epoch (federated: per local epoch across rounds)."""

    name: Literal["constant", "step", "cosine"] = "constant"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0   # linear ramp from lr/(warmup+1) to lr
    step_size: Annotated[int, Field(ge=1)] = 10      # step: multiply by gamma every step_size epochs
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    min_lr_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # cosine: floor, as a fraction of lr


class EarlyStoppingSpec(Spec):
    """Stop when a validation metric stops improving; the validation rows come out of the training rows."""

    enabled: bool = False
    metric: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    restore_best: bool = True
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.15

    @model_validator(mode="after")
    def _check(self) -> EarlyStoppingSpec:
        if not self.metric.startswith("val/"):
            raise ValueError(f"metric: early stopping watches a validation metric such as val/loss or "
                             f"val/accuracy (got {self.metric!r})")
        return self


class TrainSpec(Spec):
    # null: the loss that goes with model.head (softmax: cross_entropy, sigmoid: bce, linear: mse)
    loss: Loss | None = None
    # Per-class loss weights for imbalanced data: a list in class order, or "balanced" (n / (k * count)).
    class_weights: list[Annotated[float, Field(gt=0.0)]] | Literal["balanced"] | None = None
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    batch_size: Annotated[int, Field(gt=0)] = 32
    # centralized: epochs; federated: local epochs per round
    epochs: Annotated[int, Field(gt=0)] = 1
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None   # max global gradient norm
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)


class PartitionSpec(Spec):
    # iid; dirichlet: label skew, each class shared ~ Dir(alpha); shards: each hospital holds
    # `labels_per_hospital` labels; quantity: sizes ~ Dir(alpha), labels iid; natural: one CSV per
    # hospital, or one CSV whose `site_column` names each row's hospital.
    name: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = "dirichlet"
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    labels_per_hospital: Annotated[int, Field(ge=1)] = 2
    site_column: str | None = None
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
    "scaffold": ("server_lr",),
    "fednova": (),
}
SERVER_LR_DEFAULT = {"fedadam": 0.1, "fedyogi": 0.1, "fedadagrad": 0.1, "scaffold": 1.0}


class StrategySpec(Spec):
    name: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "trimmed_mean", "krum",
                  "multi_krum", "scaffold", "fednova"] = "fedavg"
    mu: Annotated[float, Field(ge=0.0)] = 0.01            # fedprox: weight of the proximal term
    # fedadam/fedyogi/fedadagrad (default 0.1), scaffold (default 1.0): the server's step (eta_g)
    server_lr: Annotated[float, Field(gt=0.0)] | None = None
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


class AttackSpec(Spec):
    """Robustness experiments: these hospitals send poisoned updates. `scale` sends
    w + factor*(update), `sign_flip` sends w - factor*(update), where update = trained - global."""
    kind: Literal["scale", "sign_flip"] = "sign_flip"
    hospitals: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)   # partition ids
    factor: Annotated[float, Field(gt=0.0)] = 10.0


class FaultSpec(Spec):
    """Failure drills: these hospitals raise in these rounds (empty: every round)."""
    hospitals: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    rounds: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)


class DPSpec(Spec):
    """Differential privacy. central: the server clips every hospital's update to `clipping_norm`
    and adds Gaussian noise (std noise_multiplier*clipping_norm/hospitals) to the average
    (Flower's server-side fixed clipping, RDP accountant). local: every hospital trains with
    DP-SGD (Opacus): per-example gradients clipped to `clipping_norm`, noise_multiplier*clipping_norm
    noise per step. The run refuses to start when `target_epsilon` would be exceeded."""
    mode: Literal["central", "local"] = "central"
    noise_multiplier: Annotated[float, Field(gt=0.0)] = 1.0
    clipping_norm: Annotated[float, Field(gt=0.0)] = 1.0
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    target_epsilon: Annotated[float, Field(gt=0.0)] | None = None


class SecAggSpec(Spec):
    """Secure aggregation (Flower's SecAgg+): the server only ever sees the sum of masked updates."""
    enabled: bool = True
    num_shares: Annotated[int, Field(ge=2)] = 3
    reconstruction_threshold: Annotated[int, Field(ge=2)] = 2
    clipping_range: Annotated[float, Field(gt=0.0)] = 8.0
    quantization_range: Annotated[int, Field(ge=2)] = 4194304


class FederatedSpec(Spec):
    # null with a natural partition: one hospital per CSV file.
    num_clients: Annotated[int, Field(ge=1)] | None = 10
    rounds: Annotated[int, Field(ge=1)] = 20
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    fraction_fit: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    fraction_evaluate: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    client_resources: ClientResources = Field(default_factory=ClientResources)
    # simulation: Flower's simulation engine (Ray actors); inline: the same ClientApp called in
    # this process one hospital after another, no Ray start-up (quick studies, tests)
    engine: Literal["simulation", "inline"] = "simulation"
    min_fit_clients: Annotated[int, Field(ge=1)] | None = None        # default: min(2, hospitals)
    min_available_clients: Annotated[int, Field(ge=1)] | None = None  # default: every hospital
    accept_failures: bool = True      # false: a hospital that fails a round stops the run
    round_timeout_s: Annotated[float, Field(gt=0.0)] = 3600.0
    attack: AttackSpec | None = None
    faults: FaultSpec | None = None
    dp: DPSpec | None = None
    secagg: SecAggSpec | None = None


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


class ExplainSpec(Spec):
    """Permutation feature importance on the held-out rows after training (tabular models)."""

    enabled: bool = True
    repeats: Annotated[int, Field(ge=1)] = 5
    max_rows: Annotated[int, Field(ge=10)] = 2000
    top: Annotated[int, Field(ge=1)] = 20   # features in the bar chart


SWEEP_SEARCHES = ("grid", "random")


class SweepSpec(Spec):
    """kind: sweep. Ray Tune runs the rest of the file as a `trial_kind` job once per trial.

    `space` maps dotted keys of the job to a list of values (grid: every combination; random:
    choice) or, for random search, to {low, high, log} ranges.
    """

    trial_kind: Literal["centralized"] = "centralized"
    search: Literal["grid", "random"] = "grid"
    space: dict[str, list | dict] = Field(default_factory=dict)
    num_samples: Annotated[int, Field(ge=1)] | None = None  # random: trials (default 4); grid: repeats (default 1)
    metric: str = "eval/loss"
    mode: Literal["min", "max"] = "min"
    scheduler: Literal["none", "asha"] = "none"
    grace_period: Annotated[int, Field(ge=1)] = 2     # asha: epochs before a trial may be stopped
    max_concurrent: Annotated[int, Field(ge=1)] = 2
    register_best: bool = False                       # register the best trial's model (tracking.register_model)

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for key, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key}: an empty list of values")
            if isinstance(values, dict):
                if self.search != "random":
                    raise ValueError(f"space.{key}: a range needs search: random (grid takes a list of values)")
                if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                    raise ValueError(f"space.{key}: a range is {{low, high, log}} (got {sorted(values)})")
                if not float(values["low"]) < float(values["high"]):
                    raise ValueError(f"space.{key}: low must be below high")
        return self


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")


class TrackingSpec(Spec):
    # null: a SQLite store ./mlruns.db (MLFLOW_TRACKING_URI wins when set)
    uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "consortium"
    register_model: str | None = None
    log_model: bool = True
    # false: keep metrics in memory only (dry runs, benchmarks); nothing is written, MLflow not imported
    enabled: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrackingSpec:
        if not self.enabled and self.register_model is not None:
            raise ValueError("register_model: registering needs tracking.enabled: true (set register_model: null)")
        if self.register_model is not None and not _MODEL_NAME.match(self.register_model):
            raise ValueError(f"register_model: {self.register_model!r} is not a valid model name: use letters, "
                             f"digits, '_', '-' and '.', starting with a letter or digit")
        if self.uri is not None and not re.match(r"^(sqlite|file|https?|postgresql|mysql|mssql|databricks)[:+]|^/",
                                                 self.uri):
            raise ValueError(f"uri: {self.uri!r} is not an MLflow store: expected sqlite:///path.db, "
                             f"http://host:port, a file path, or a database URI")
        return self


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
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    sweep: SweepSpec | None = None

    @property
    def head(self) -> str:
        return self.model.head

    @property
    def loss(self) -> str:
        return self.train.loss or HEAD_LOSS[self.model.head]

    @property
    def task(self) -> str:
        return "regression" if self.model.head == "linear" else "classification"

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
            _check_federated(self)
        if self.model.name == "cnn" and self.data.source not in ("digits", "csv"):
            raise ValueError("model.name: cnn needs image rows (data.source digits, or a csv of square images)")
        if self.train.loss is not None and LOSS_HEAD[self.train.loss] != self.model.head:
            raise ValueError(f"train.loss: '{self.train.loss}' trains a {LOSS_HEAD[self.train.loss]} head, but "
                             f"model.head is '{self.model.head}' (set model.head: {LOSS_HEAD[self.train.loss]})")
        regression_data = self.data.source == "diabetes"
        if regression_data and self.model.head != "linear":
            raise ValueError("model.head: diabetes is a regression target: set model.head: linear")
        if self.data.source in ("breast_cancer", "digits", "wine", "xor", "sequences") and self.model.head == "linear":
            raise ValueError(f"model.head: linear is for regression, but {self.data.source} has class labels")
        if self.model.head == "linear":
            if self.train.class_weights is not None:
                raise ValueError("train.class_weights: a regression (model.head linear) has no classes")
            if self.data.classes is not None:
                raise ValueError("data.classes: a regression (model.head linear) has no classes")
            if self.kind == "federated" and part == "dirichlet":
                raise ValueError("federated.partition.name: dirichlet skews class labels; a regression target "
                                 "needs iid or natural")
        if self.model.name in SEQUENCE_MODELS and self.data.source in ("breast_cancer", "digits", "wine", "diabetes", "xor"):
            raise ValueError(f"model.name: {self.model.name} reads sequences (data.source sequences, or a csv of "
                             f"steps x model.input_size columns)")
        if self.kind == "federated" and self.train.early_stopping.enabled:
            raise ValueError("train.early_stopping: stops epochs of a centralized or ray job; a federated job "
                             "runs federated.rounds rounds")
        if self.kind == "sweep" and self.sweep is None:
            raise ValueError("sweep: kind sweep needs a sweep section with the space to search")
        if self.kind != "sweep" and self.sweep is not None:
            raise ValueError(f"sweep: only used with kind: sweep (kind is '{self.kind}')")
        if self.sweep is not None:
            _check_sweep_space(self)
        return self


def _check_federated(job: JobSpec) -> None:
    fed, part = job.federated, job.federated.partition
    n = fed.num_clients
    if part.site_column is not None and part.name != "natural":
        raise ValueError(f"federated.partition.site_column: only used with name natural (name is '{part.name}')")
    if part.site_column is not None and part.site_column == job.data.target:
        raise ValueError(f"federated.partition.site_column: '{part.site_column}' is the target column")
    if part.name in ("shards",) and job.model.head == "linear":
        raise ValueError("federated.partition.name: shards splits by class label; a regression target needs "
                         "iid, quantity or natural")
    for section in ("attack", "faults"):
        spec = getattr(fed, section)
        if spec is not None and n is not None:
            bad = [h for h in spec.hospitals if h >= n]
            if bad:
                raise ValueError(f"federated.{section}.hospitals: {bad} out of range for {n} hospitals "
                                 f"(partition ids 0..{n - 1})")
        if spec is not None and fed.rounds and section == "faults":
            late = [r for r in spec.rounds if r > fed.rounds]
            if late:
                raise ValueError(f"federated.faults.rounds: {late} beyond federated.rounds ({fed.rounds})")
    if n is not None:
        for key in ("min_fit_clients", "min_available_clients"):
            v = getattr(fed, key)
            if v is not None and v > n:
                raise ValueError(f"federated.{key}: {v} is more than the {n} hospitals")
    name = fed.strategy.name
    if name in ("scaffold", "fednova") and job.train.optimizer.name != "sgd":
        raise ValueError(f"train.optimizer.name: {name} corrects plain SGD steps; set train.optimizer.name: sgd "
                         f"(it is '{job.train.optimizer.name}')")
    if fed.dp is not None:
        if job.model.batchnorm:
            raise ValueError("federated.dp: batch norm's running statistics are neither clipped nor noised; "
                             "set model.batchnorm: false")
        if fed.dp.mode == "central" and name != "fedavg":
            raise ValueError(f"federated.dp: central DP clips and noises FedAvg's average; strategy is '{name}' "
                             "(set federated.strategy.name: fedavg, or dp.mode: local)")
        if fed.dp.mode == "local":
            if job.model.name not in ("mlp", "logistic", "cnn") or job.model.batchnorm:
                raise ValueError("federated.dp: local DP-SGD needs per-example gradients: model.name mlp, logistic "
                                 "or cnn without model.batchnorm")
            if name == "scaffold":
                raise ValueError("federated.dp: local DP-SGD does not combine with scaffold's corrected gradients")
        if fed.secagg is not None and fed.secagg.enabled:
            raise ValueError("federated.dp: combine DP with secagg is not supported yet (choose one)")
    if fed.secagg is not None and fed.secagg.enabled:
        if name != "fedavg":
            raise ValueError(f"federated.secagg: SecAgg+ sums masked updates, which only FedAvg can use; "
                             f"strategy is '{name}'")
        if fed.secagg.reconstruction_threshold > fed.secagg.num_shares:
            raise ValueError(f"federated.secagg.reconstruction_threshold: "
                             f"{fed.secagg.reconstruction_threshold} is more than num_shares ({fed.secagg.num_shares})")
        if fed.attack is not None or fed.faults is not None:
            raise ValueError("federated.secagg: attack and faults drills run without secure aggregation")
        if fed.fraction_fit < 1.0:
            raise ValueError("federated.secagg: SecAgg+ here masks every hospital's update each round; "
                             "set federated.fraction_fit: 1.0")
        if n is not None and fed.secagg.num_shares > n:
            raise ValueError(f"federated.secagg.num_shares: {fed.secagg.num_shares} is more than the {n} hospitals")


def _check_sweep_space(job: JobSpec) -> None:
    """Every value a sweep can pick must make a valid job (for a range: both ends)."""
    from pydantic import ValidationError

    base = job.model_dump(mode="json")
    base["kind"], base["sweep"] = job.sweep.trial_kind, None
    for key, values in job.sweep.space.items():
        if not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", key):
            raise ValueError(f"sweep.space: '{key}' is not a dotted key such as train.optimizer.lr")
        for value in values if isinstance(values, list) else [values["low"], values["high"]]:
            data = json.loads(json.dumps(base))
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"sweep.space: '{key}' is not a key of the job")
                node = node[part]
            node[parts[-1]] = value
            try:
                JobSpec.model_validate(data)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or key
                msg = str(err.get("ctx", {}).get("error", err["msg"]))
                raise ValueError(f"sweep.space: {key}={value!r} makes an invalid job: {where}: {msg}") from None
