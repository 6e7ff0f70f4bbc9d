"""`federated:` hospitals, partitions, rounds, the strategy, engines, privacy and drills."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec
from orchestrator.spec.engines import ENGINES
from strategies.registry import StrategyOptions


class PartitionSpec(Spec):
    name: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = Field("dirichlet", description=(
        "iid | dirichlet (label skew, each class shared ~ Dir(alpha)) | shards (labels_per_hospital labels each) "
        "| quantity (sizes ~ Dir(alpha), labels iid) | natural (a CSV per hospital, or site_column)"))
    alpha: Annotated[float, Field(gt=0.0, description="dirichlet, quantity: smaller is more skewed")] = 0.5
    labels_per_hospital: Annotated[int, Field(ge=1, description="shards: labels each hospital holds")] = 2
    site_column: str | None = Field(None, description="natural: the column of one CSV naming each row's hospital")
    min_size: Annotated[int, Field(ge=2, description=(
        "every hospital gets at least this many rows (before its own train/test split)"))] = 10


class ClientResources(Spec):
    num_cpus: Annotated[float, Field(gt=0.0, description="per simulated hospital (Flower's default is 2)")] = 1.0
    num_gpus: Annotated[float, Field(ge=0.0, description="per simulated hospital; fractions share a GPU")] = 0.0


class AttackSpec(Spec):
    """Robustness drills: these hospitals send poisoned updates. `scale` sends w + factor*(update),
    `sign_flip` sends w - factor*(update), where update = trained - global."""
    kind: Literal["scale", "sign_flip"] = Field("sign_flip", description="scale | sign_flip")
    hospitals: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="partition ids")
    factor: Annotated[float, Field(gt=0.0, description="how far the poisoned update goes")] = 10.0


class FaultSpec(Spec):
    """Failure drills: these hospitals raise in these rounds (empty: every round)."""
    hospitals: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="partition ids")
    rounds: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, description="empty: every round")


class DPSpec(Spec):
    """Differential privacy. central: the server clips every hospital's update to `clipping_norm`
    and adds Gaussian noise (std noise_multiplier*clipping_norm/hospitals) to the average (Flower's
    server-side fixed clipping, RDP accountant). local: every hospital trains with DP-SGD (Opacus).
    The run refuses to start when `target_epsilon` would be exceeded."""
    mode: Literal["central", "local"] = Field("central", description="central | local")
    noise_multiplier: Annotated[float, Field(gt=0.0, description="noise std in units of clipping_norm")] = 1.0
    clipping_norm: Annotated[float, Field(gt=0.0, description="central: per update; local: per example")] = 1.0
    delta: Annotated[float, Field(gt=0.0, lt=1.0, description="the delta epsilon is reported at")] = 1e-5
    target_epsilon: Annotated[float, Field(gt=0.0)] | None = Field(None, description=(
        "a budget: refuse to start when the configured rounds and noise would exceed it"))


class SecAggSpec(Spec):
    """Secure aggregation (Flower's SecAgg+): the server only ever sees the sum of masked updates."""
    enabled: bool = Field(True, description="mask every hospital's update")
    num_shares: Annotated[int, Field(ge=2, description="share holders per hospital")] = 3
    reconstruction_threshold: Annotated[int, Field(ge=2, description="shares that rebuild a dropped mask")] = 2
    clipping_range: Annotated[float, Field(gt=0.0, description="parameters must lie within +-this")] = 8.0
    quantization_range: Annotated[int, Field(ge=2, description="levels of the quantised update")] = 4194304


class CompressionSpec(Spec):
    """Fewer bytes per update: each hospital sends its update (trained - global) encoded; the server
    decodes it before the strategy aggregates (orchestrator.core.compression)."""
    method: Literal["float16", "bfloat16", "int8", "topk"] = Field("int8", description=(
        "float16 | bfloat16 (2 bytes a value) | int8 (1 byte a value, a scale per tensor) | topk (the "
        "largest `fraction` of each tensor's values, with their indices)"))
    fraction: Annotated[float, Field(gt=0.0, le=1.0, description="topk: the share of each tensor's values sent")] = 0.1
    error_feedback: bool = Field(True, description=(
        "each hospital adds what the encoding lost to its next round's update (kept at the hospital)"))


class PersonalizeSpec(Spec):
    """A personal model at every hospital, from the global model and its own rows only (metrics
    personal/..., personal_site_mean/... and hospital_<name>/personal/...). finetune: after the
    last round, `epochs` more local epochs. fedper: the head (last layer) stays at each hospital
    across rounds. fedrep: the same, each round training its own head first (`epochs`, body
    frozen), then the body. fedbn: batch-norm layers stay at each hospital. ditto: a personal model
    trained every round beside the global one, pulled towards it with strength `lam`."""
    method: Literal["finetune", "fedper", "fedrep", "fedbn", "ditto"] = Field("finetune", description=(
        "finetune | fedper | fedrep | fedbn | ditto"))
    epochs: Annotated[int, Field(ge=1, description=(
        "finetune: local epochs from the final global model; fedrep: head epochs each round"))] = 5
    lr: Annotated[float, Field(gt=0.0)] | None = Field(None, description=(
        "finetune: a constant learning rate (null: train.optimizer.lr)"))
    lam: Annotated[float, Field(ge=0.0, description="ditto: pull of the personal model towards the global one")] = 0.1
    share_models: bool = Field(False, description=(
        "true: each hospital sends its personal model back (logged per hospital, scored at every other "
        "hospital by federated.crossval); false: it keeps it and only metrics travel"))

    @property
    def stateful(self) -> bool:
        """Something of the hospital's own persists from round to round."""
        return self.method != "finetune"


class RoundStoppingSpec(Spec):
    """Stop the rounds when a metric the server sees stops improving, and end with the best round's
    global model. The metric is measured on the rows it is named after: central/ on the server's
    held-out split, eval/ and site_mean/ on the hospitals' test rows (then the final metrics are
    those of the round chosen on them: optimistic, as any selection on reported rows)."""
    metric: str = Field("eval/loss", description="e.g. eval/loss, central/loss, site_mean/accuracy")
    mode: Literal["min", "max"] = Field("min", description="min | max")
    patience: Annotated[int, Field(ge=1, description="evaluated rounds without improvement before stopping")] = 3
    min_delta: Annotated[float, Field(ge=0.0, description="smallest change that counts as improvement")] = 0.0
    restore_best: bool = Field(True, description="end with the best round's global model")

    @model_validator(mode="after")
    def _check(self) -> RoundStoppingSpec:
        if not self.metric.startswith(("eval/", "central/", "site_mean/")):
            raise ValueError(f"metric: round-level early stopping watches what the server sees each round: "
                             f"eval/..., central/... or site_mean/... (got {self.metric!r})")
        return self


class FederatedSpec(Spec):
    num_clients: Annotated[int, Field(ge=1)] | None = Field(10, description=(
        "hospitals; null with partition natural: one hospital per CSV file (or site)"))
    rounds: Annotated[int, Field(ge=1, description="federated rounds")] = 20
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    strategy: StrategyOptions = Field(  # type: ignore[assignment]  # a dict: pydantic validates it
        default_factory=lambda: {"name": "fedavg"},
        description="name and that strategy's own options; see the strategies table")
    fraction_fit: Annotated[float, Field(gt=0.0, le=1.0, description=(
        "< 1: hospitals sampled per round, reproducibly from the seed"))] = 1.0
    fraction_evaluate: Annotated[float, Field(gt=0.0, le=1.0, description="hospitals evaluated per round")] = 1.0
    client_resources: ClientResources = Field(default_factory=ClientResources)
    engine: Literal[("auto", *ENGINES)] = Field("auto", description=(  # type: ignore[valid-type]
        "auto: the fastest engine that runs this job (the run's params federated.engine_ran and "
        "federated.engine_reason say which and why) | simulation: Flower's simulation engine (a Ray actor "
        "per hospital) | inline: the same ClientApp called in this process one hospital after another, "
        "no Ray start-up | vectorized: in this process, a round's hospitals trained together as one "
        "batched computation (torch.func vmap over their stacked parameters) | deployment: submit to a "
        "running Flower SuperLink (federated.superlink), one SuperNode per hospital holding its own data"))
    parallel: bool = Field(False, description=(
        "auto engine: true trains a round's hospitals in parallel processes (Flower's simulation, a Ray "
        "actor each with client_resources)"))
    superlink: str | None = Field(None, description=(
        "deployment: the SuperLink's HOST:PORT (consortium federation superlink serves on 9093)"))
    root_certificates: str | None = Field(None, description=(
        "deployment: the consortium's CA certificate (PEM) that signed the SuperLink's certificate"))
    insecure: bool = Field(False, description=(
        "deployment: no TLS to the SuperLink (testing only: every update travels in the clear)"))
    poll_interval_s: Annotated[float, Field(gt=0.0, le=10.0, description=(
        "deployment: how often the ServerApp asks the SuperLink for replies it waits on (Flower's own "
        "grid asks every 3 s)"))] = 0.25
    join_timeout_s: Annotated[float, Field(gt=0.0, description=(
        "deployment: how long the server waits for num_clients hospitals to join; then it goes on "
        "with those connected if there are at least min_available_clients (default 1)"))] = 120.0
    min_fit_clients: Annotated[int, Field(ge=1)] | None = Field(None, description="null: min(2, hospitals)")
    min_available_clients: Annotated[int, Field(ge=1)] | None = Field(None, description="null: every hospital")
    evaluate_every: Annotated[int, Field(ge=1, description=(
        "the hospitals (and the central split) evaluate the global model every this many rounds, and "
        "always in the last round; 1: every round"))] = 1
    accept_failures: bool = Field(True, description="false: a hospital that fails a round stops the run")
    round_timeout_s: Annotated[float, Field(gt=0.0, description="a hospital slower than this fails the round")] = 3600.0
    attack: AttackSpec | None = Field(None, description="a drill: poisoned updates from these hospitals")
    faults: FaultSpec | None = Field(None, description="a drill: these hospitals raise in these rounds")
    dp: DPSpec | None = Field(None, description="differential privacy, central or local")
    secagg: SecAggSpec | None = Field(None, description="secure aggregation with Flower's SecAgg+")
    early_stopping: RoundStoppingSpec | None = Field(None, description=(
        "stop the rounds when a metric stops improving; end with the best round's model"))
    personalize: PersonalizeSpec | None = Field(None, description=(
        "personalized models: each hospital adapts the final global model to its own rows"))
    compression: CompressionSpec | None = Field(None, description=(
        "updates sent as float16/bfloat16, 8-bit or top-k sparse (with error feedback); bytes up and down "
        "are logged as comm/bytes_up and comm/bytes_down either way"))
    sites: str | None = Field(None, description=(
        "simulation: a folder standing for the hospitals' own disks: SITES/NAME/policy.yaml (or "
        "SITES/policy.yaml for every hospital) is that hospital's site policy, enforced at it as a SuperNode's "
        "--policy is; its privacy ledger and audit log are kept in SITES/NAME/ (a deployment ignores it: "
        "there each hospital's own SuperNode holds them)"))
    crossval: bool = Field(False, description=(
        "cross-site validation at the end: every model (the global one, the best round's; with kind "
        "local each hospital's own) evaluated at every hospital on its own test rows, only metrics "
        "travel; logged as crossval/matrix.json and crossval/heatmap.png"))

    def min_fit(self, hospitals: int) -> int:
        """The resolved `min_fit_clients`: at least this many hospitals train each round."""
        return self.min_fit_clients if self.min_fit_clients is not None else min(2, hospitals)

    def min_available(self, hospitals: int) -> int:
        """Hospitals the server waits for before round 1."""
        return min(self.min_available_clients or hospitals, hospitals)

    @property
    def secure(self) -> bool:
        return self.secagg is not None and self.secagg.enabled
