"""The whole job: every YAML section, and the checks that span sections.

`JOB_KINDS` is the registry of job kinds: a name and the module that runs it (imported only when a
job of that kind runs, by `orchestrator.jobs.kinds`). Adding a kind is its module plus one line here.
"""
from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec
from orchestrator.spec.cluster import CheckpointSpec, RaySpec
from orchestrator.spec.data import FILE_SOURCES, LABELLED_SOURCES, TABULAR_SOURCES, DataSpec
from orchestrator.spec.engines import refusal as engine_refusal
from orchestrator.spec.errors import Problems
from orchestrator.spec.federated import FederatedSpec
from orchestrator.spec.model import IMAGE_MODELS, SEGMENTATION_MODELS, SEQUENCE_MODELS, ModelSpec
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.tracking import ExplainSpec, TrackingSpec
from strategies.registry import declared
from orchestrator.spec.train import HEAD_LOSS, LOSS_HEAD, TrainSpec

JOB_KINDS = {
    "federated": "orchestrator.jobs.federated.job",
    "centralized": "orchestrator.jobs.centralized",
    "local": "orchestrator.jobs.local",
    "ray": "orchestrator.jobs.ray.job",
    "sweep": "orchestrator.jobs.sweep",
}
JobKind = Literal[tuple(JOB_KINDS)]
# The kinds whose every metric is logged from the job's own process (Ray Train's rank 0 sends its epochs
# to the driver, `jobs.ray.inbox`): history reads answered from memory, MLflow in a process of its own
LOGGED_HERE = frozenset({"federated", "local", "ray"})


class JobSpec(Spec):
    name: str = Field("job", min_length=1, description="names the MLflow run")
    kind: JobKind = Field("federated", description=" | ".join(JOB_KINDS))
    seed: int = Field(42, description="same YAML + seed -> same final metrics")
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
    def by_hospital(self) -> bool:
        """The data lies with hospitals, each keeping its own rows (federated; local: each trains alone)."""
        return self.kind in ("federated", "local")

    @property
    def pooled(self) -> bool:
        """Trains one model on the pooled data (every kind but federated and local)."""
        return not self.by_hospital

    @property
    def head(self) -> str:
        return self.model.head

    @property
    def loss(self) -> str:
        return self.train.loss or HEAD_LOSS[self.model.head]

    @property
    def task(self) -> str:
        return {"linear": "regression", "segmentation": "segmentation"}.get(self.model.head, "classification")

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        """Every check that spans sections; all problems found are raised at once (`Problems`)."""
        problems: list[str] = []
        part = self.federated.partition.name
        deployed = self.kind == "federated" and self.federated.engine == "deployment"
        if self.data.source == "csv" and not self.data.path and not deployed:
            problems.append("data.path: data.source 'csv' needs data.path (a CSV file or a directory of CSVs)")
        if self.data.source == "images" and not self.data.path and not deployed:
            problems.append("data.path: data.source 'images' needs data.path (a folder of images, or a directory "
                            "with one folder per hospital)")
        if self.by_hospital:
            if part == "natural" and self.data.source not in FILE_SOURCES:
                problems.append("federated.partition.name: 'natural' needs data.source 'csv' or 'images' with "
                                "data.path a directory holding one CSV (or one folder of images) per hospital")
            if part != "natural" and self.federated.num_clients is None:
                problems.append(f"federated.num_clients: required with partition '{part}'")
            if self.kind == "local":
                problems += _check_local(self)
            else:
                problems += _check_federated(self)
        if self.model.name in IMAGE_MODELS and self.data.source not in ("digits", "csv", "images"):
            problems.append(f"model.name: {self.model.name} needs images (data.source images or digits, or a csv "
                            "of square images)")
        if self.train.augment.enabled and self.data.source not in ("images", "digits") \
                and self.model.name not in IMAGE_MODELS:
            problems.append("train.augment: changes images; the data are not images (data.source images or digits)")
        if self.data.source == "images" and self.model.head == "linear":
            problems.append("model.head: linear is for regression, but images have class labels")
        if self.model.spatial_dims == 3:
            problems += _check_volumes(self)
        if self.model.head == "multilabel":
            problems += _check_multilabel(self)
        elif self.model.head == "segmentation":
            problems += _check_segmentation(self)
        elif self.data.mask_column or self.data.mask_pattern:
            problems.append(f"data.{'mask_column' if self.data.mask_column else 'mask_pattern'}: masks are what a "
                            f"segmentation learns (model.name unet or segresnet); model.name is {self.model.name}")
        elif self.train.loss is not None and LOSS_HEAD[self.train.loss] != self.model.head:
            problems.append(f"train.loss: '{self.train.loss}' trains a {LOSS_HEAD[self.train.loss]} head, but "
                            f"model.head is '{self.model.head}' (set model.head: {LOSS_HEAD[self.train.loss]})")
        regression_data = self.data.source == "diabetes"
        if regression_data and self.model.head != "linear":
            problems.append("model.head: diabetes is a regression target: set model.head: linear")
        if self.data.source in LABELLED_SOURCES and self.model.head == "linear":
            problems.append(f"model.head: linear is for regression, but {self.data.source} has class labels")
        if self.model.head == "linear":
            if self.train.class_weights is not None:
                problems.append("train.class_weights: a regression (model.head linear) has no classes")
            if self.data.classes is not None:
                problems.append("data.classes: a regression (model.head linear) has no classes")
            if self.by_hospital and part == "dirichlet":
                problems.append("federated.partition.name: dirichlet skews class labels; a regression target "
                                "needs iid or natural")
        if self.model.name == "gan":
            problems += _check_gan(self)
        if self.model.name in SEQUENCE_MODELS and self.data.source in TABULAR_SOURCES:
            problems.append(f"model.name: {self.model.name} reads sequences (data.source sequences, or a csv of "
                            f"steps x model.input_size columns)")
        if self.by_hospital and self.train.early_stopping.enabled:
            problems.append(f"train.early_stopping: stops epochs of a centralized or ray job; a {self.kind} job "
                            "runs federated.rounds rounds (federated.early_stopping stops the rounds)")
        if self.kind == "sweep" and self.sweep is None:
            problems.append("sweep: kind sweep needs a sweep section with the space to search")
        if self.kind != "sweep" and self.sweep is not None:
            problems.append(f"sweep: only used with kind: sweep (kind is '{self.kind}')")
        if self.sweep is not None and not problems:   # each trial is validated whole: the job must be first
            problems += _check_sweep_space(self)
        if problems:
            raise Problems(problems)
        return self


def _check_volumes(job: JobSpec) -> list[str]:
    """model.spatial_dims 3: whole volumes (NIfTI, multi-frame DICOM) into a 3D network."""
    problems: list[str] = []
    if job.data.source != "images":
        problems.append(f"model.spatial_dims: 3 reads volumes (data.source images: NIfTI or multi-frame DICOM "
                        f"files); data.source is '{job.data.source}'")
    if job.data.spacing is not None:
        problems.append("data.spacing: resamples 2D images to [row, column] millimetres; with model.spatial_dims 3 "
                        "each volume is resized to data.image_size voxels per axis (leave data.spacing out)")
    if job.train.augment.enabled:
        problems.append("train.augment: flips, rotations and shifts of 2D images; with model.spatial_dims 3 leave "
                        "train.augment out")
    return problems


def _check_segmentation(job: JobSpec) -> list[str]:
    """model.head segmentation: a label per pixel (voxel), from a mask beside each image."""
    problems: list[str] = []
    if job.data.source != "images":
        problems.append(f"model.name: {job.model.name} segments images with masks beside them (data.source "
                        f"images); data.source is '{job.data.source}'")
    if job.train.loss is not None and LOSS_HEAD[job.train.loss] != "segmentation":
        problems.append(f"train.loss: '{job.train.loss}'; a segmentation trains dice_ce or dice_focal")
    if job.train.class_weights is not None:
        problems.append("train.class_weights: weights one class per image; a segmentation labels every pixel "
                        "(leave class_weights out: the Dice term already weighs each label alike)")
    if job.train.augment.enabled:
        problems.append("train.augment: moves images but not their masks; with a segmentation leave train.augment "
                        "out (model.patch_size draws patches from each image instead)")
    if job.by_hospital and job.federated.partition.name in ("dirichlet", "shards"):
        problems.append(f"federated.partition.name: {job.federated.partition.name} deals images by their one "
                        "label; a mask has many: use iid, quantity or natural")
    return problems


def _check_multilabel(job: JobSpec) -> list[str]:
    """model.head multilabel: several findings per image, one sigmoid output each."""
    problems: list[str] = []
    if job.data.source != "images":
        problems.append(f"model.head: multilabel reads several findings per image from a manifest (data.source "
                        f"images); data.source is '{job.data.source}'")
    if job.train.loss not in (None, "bce"):
        problems.append(f"train.loss: '{job.train.loss}'; model.head multilabel trains one binary cross-entropy "
                        "per finding (train.loss: bce, or leave it out)")
    if job.train.class_weights is not None:
        problems.append("train.class_weights: weights one class per image; with model.head multilabel an image "
                        "has several findings (leave class_weights out)")
    if job.by_hospital and job.federated.partition.name in ("dirichlet", "shards"):
        problems.append(f"federated.partition.name: {job.federated.partition.name} deals images by their one "
                        "label; with several findings per image use iid, quantity or natural")
    return problems


def _check_gan(job: JobSpec) -> list[str]:
    """model.name gan: a federated generator of labelled tabular rows, trained with FedAvg-family strategies."""
    problems: list[str] = []
    fed = job.federated
    if job.kind != "federated":
        problems.append(f"model.name: gan trains a generator over hospitals (kind federated); kind is '{job.kind}'")
    if job.model.head == "linear":
        problems.append("model.name: gan generates rows conditioned on a class label; a regression target has none")
    taken = [k for k, v in (("federated.dp", fed.dp), ("federated.secagg", fed.secagg),
                            ("federated.personalize", fed.personalize), ("federated.early_stopping", fed.early_stopping),
                            ("model.init_from", job.model.init_from), ("model.freeze", job.model.freeze or None),
                            ("train.class_weights", job.train.class_weights)) if v is not None]
    if fed.crossval:
        taken.append("federated.crossval")
    if taken:
        problems.append(f"model.name: gan does not combine with {taken[0]} here (the GAN trains its own "
                        "alternating steps and has no classifier to score)")
    return problems


def _check_local(job: JobSpec) -> list[str]:
    """kind local: every hospital trains alone in this process, on the shares a simulation gives it."""
    problems: list[str] = []
    fed = job.federated
    if (why := engine_refusal(job)) is not None:
        problems.append(why)
    drills = [k for k in ("attack", "faults", "dp", "secagg", "personalize", "early_stopping")
              if getattr(fed, k) is not None]
    if drills:
        problems.append(f"federated.{drills[0]}: a federated drill/privacy setting; kind local sends nothing "
                        "anywhere (remove it, or use kind: federated)")
    return problems


def _check_federated(job: JobSpec) -> list[str]:
    problems: list[str] = []
    fed, part = job.federated, job.federated.partition
    n = fed.num_clients
    if part.site_column is not None and part.name != "natural":
        problems.append(f"federated.partition.site_column: only used with name natural (name is '{part.name}')")
    if part.site_column is not None and part.site_column == job.data.target:
        problems.append(f"federated.partition.site_column: '{part.site_column}' is the target column")
    if part.name in ("shards",) and job.model.head == "linear":
        problems.append("federated.partition.name: shards splits by class label; a regression target needs "
                        "iid, quantity or natural")
    for section in ("attack", "faults"):
        spec = getattr(fed, section)
        if spec is not None and n is not None:
            bad = [h for h in spec.hospitals if h >= n]
            if bad:
                problems.append(f"federated.{section}.hospitals: {bad} out of range for {n} hospitals "
                                f"(partition ids 0..{n - 1})")
        if spec is not None and fed.rounds and section == "faults":
            late = [r for r in spec.rounds if r > fed.rounds]
            if late:
                problems.append(f"federated.faults.rounds: {late} beyond federated.rounds ({fed.rounds})")
    if n is not None:
        for key in ("min_fit_clients", "min_available_clients"):
            v = getattr(fed, key)
            if v is not None and v > n:
                problems.append(f"federated.{key}: {v} is more than the {n} hospitals")
    if fed.engine == "deployment":
        if not fed.superlink:
            problems.append("federated.superlink: engine deployment submits to a running SuperLink: set "
                            "federated.superlink: HOST:PORT (or run `consortium federation poc CONFIG`)")
        if not job.tracking.enabled:
            problems.append("tracking.enabled: engine deployment records the run through MLflow (the ServerApp "
                            "runs at the SuperLink): set tracking.enabled: true")
        if not fed.insecure and not fed.root_certificates:
            problems.append("federated.root_certificates: the consortium's CA certificate is needed to reach the "
                            "SuperLink over TLS (or federated.insecure: true, for a test only)")
        if "source" not in job.data.model_fields_set:
            problems.append("data.source: a deployment trains on the CSVs the hospitals' SuperNodes were started "
                            "with (--data): set data.source: csv (no data.path: the coordinator reads no file), or "
                            "name a bundled demo source (e.g. data.source: breast_cancer) that SuperNodes started "
                            "without --data agree to")
        if part.name != "natural" and job.data.source in FILE_SOURCES:
            problems.append(f"federated.partition.name: '{part.name}' splits one shared file, which no real "
                            "hospital holds; in a deployment each hospital reads its own CSV (or image folder): use natural")
    elif fed.superlink or fed.root_certificates or fed.insecure:
        problems.append(f"federated.superlink: only used with engine deployment (engine is '{fed.engine}')")
    if (why := engine_refusal(job)) is not None:   # what the named engine declares it cannot run
        problems.append(why)
    name = fed.strategy.name
    strategy = declared(name)
    problems += strategy.requires(job)   # what the strategy itself needs of the job (its module says)
    own = fed.personalize
    if own is not None and own.method == "fedbn" and job.model.norm != "batch":
        problems.append("federated.personalize.method: fedbn keeps batch-norm layers local; the model has none "
                        "(set model.batchnorm: true, or model.norm: batch)")
    if own is not None and own.method in ("fedper", "fedrep") and job.model.name == "logistic":
        problems.append(f"federated.personalize.method: {own.method} shares the body and keeps the head; a "
                        "logistic model is a head alone (use mlp, cnn or a sequence model)")
    if own is not None and own.stateful and fed.dp is not None:
        problems.append(f"federated.personalize.method: {own.method} changes each hospital's local training; "
                        "it does not combine with federated.dp here (use finetune, or drop federated.dp)")
    if fed.dp is not None and fed.personalize is not None and fed.personalize.share_models:
        problems.append("federated.personalize.share_models: personal models are fine-tuned without DP noise; "
                        "with federated.dp a hospital keeps its own (share_models: false, only metrics travel)")
    if fed.dp is not None:
        if job.model.norm == "batch":
            problems.append("federated.dp: batch norm's running statistics are neither clipped nor noised; "
                            "set model.batchnorm: false (image networks: model.norm: group)")
        if fed.dp.mode == "central" and not strategy.plain_average:
            problems.append(f"federated.dp: central DP clips and noises FedAvg's average; strategy is '{name}' "
                            "(set federated.strategy.name: fedavg, or dp.mode: local)")
        if fed.dp.mode == "local":
            # Opacus' per-example gradients: every feedforward and image network (MONAI's ResNet blocks
            # add their shortcut out of place here: `models.out_of_place_residuals`), never batch norm
            if job.model.name not in ("mlp", "logistic", *IMAGE_MODELS, *SEGMENTATION_MODELS) \
                    or job.model.norm == "batch":
                problems.append("federated.dp: local DP-SGD needs per-example gradients: model.name mlp, logistic, "
                                f"or an image network ({', '.join(IMAGE_MODELS)}), without batch norm "
                                "(model.norm: group)")
        if fed.secure:
            problems.append("federated.dp: combine DP with secagg is not supported yet (choose one)")
    if fed.compression is not None and (fed.secure or (fed.dp is not None and fed.dp.mode == "central")):
        problems.append("federated.compression: " + ("SecAgg+ quantizes the masked updates on its own terms"
                                                     if fed.secure else "central DP clips each hospital's whole "
                                                     "update at the server (use dp.mode: local)") + "; remove one")
    if fed.secure:
        if not strategy.plain_average:
            problems.append(f"federated.secagg: SecAgg+ sums masked updates, which only FedAvg can use; "
                            f"strategy is '{name}'")
        if fed.secagg.reconstruction_threshold > fed.secagg.num_shares:
            problems.append(f"federated.secagg.reconstruction_threshold: "
                            f"{fed.secagg.reconstruction_threshold} is more than num_shares ({fed.secagg.num_shares})")
        if fed.attack is not None or fed.faults is not None:
            problems.append("federated.secagg: attack and faults drills run without secure aggregation")
        if fed.early_stopping is not None:
            problems.append("federated.early_stopping: SecAgg+ rounds here run to federated.rounds; remove one")
        if fed.personalize is not None:
            problems.append("federated.personalize: SecAgg+ jobs here run their own ClientApp, which answers only "
                            "masked training; personalize without secagg")
        if fed.crossval:
            problems.append("federated.crossval: SecAgg+ jobs here run their own ClientApp, which answers only "
                            "masked training; run cross-site validation afterwards: consortium crossval MODEL_URI CONFIG")
        if fed.evaluate_every != 1:
            problems.append("federated.evaluate_every: SecAgg+ rounds here evaluate every round; "
                            "set federated.evaluate_every: 1")
        if fed.fraction_fit < 1.0:
            problems.append("federated.secagg: SecAgg+ here masks every hospital's update each round; "
                            "set federated.fraction_fit: 1.0")
        if n is not None and fed.secagg.num_shares > n:
            problems.append(f"federated.secagg.num_shares: {fed.secagg.num_shares} is more than the {n} hospitals")
    return problems


def trial_base(job: JobSpec) -> dict:
    """A sweep's trial job as data: the sweep's job with kind trial_kind. A key the engine choice
    reads as "set by the user" (federated.round_timeout_s) stays out unless the user set it."""
    base = job.model_dump(mode="json")
    base["kind"], base["sweep"] = job.sweep.trial_kind, None
    if "round_timeout_s" not in job.federated.model_fields_set:
        base["federated"].pop("round_timeout_s")
    return base


def _check_sweep_space(job: JobSpec) -> list[str]:
    """Every value a sweep can pick must make a valid job (for a range: both ends)."""
    from pydantic import ValidationError

    assert job.sweep is not None
    base = trial_base(job)
    if job.sweep.trial_kind == "federated":
        from orchestrator.spec.engines import choose_engine

        engine, reason = choose_engine(JobSpec.model_validate(base))
        if engine not in ("inline", "vectorized"):
            return [f"sweep.trial_kind: federated trials run in this process inside a Ray Tune trial "
                    f"(federated.engine inline or vectorized); this job would run '{engine}' ({reason}), "
                    "and Flower's simulation engine shuts Ray down, so it cannot run inside one"]
    problems: list[str] = []
    for key, values in job.sweep.space.items():
        if not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", key):
            problems.append(f"sweep.space: '{key}' is not a dotted key such as train.optimizer.lr")
            continue
        for value in values if isinstance(values, list) else [values["low"], values["high"]]:
            data = json.loads(json.dumps(base))
            node = data
            parts = key.split(".")
            if any(not isinstance((node := node.get(part)), dict) for part in parts[:-1]):
                problems.append(f"sweep.space: '{key}' is not a key of the job")
                break
            node[parts[-1]] = value
            try:
                JobSpec.model_validate(data)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or key
                error = err.get("ctx", {}).get("error", err["msg"])
                msg = error.problems[0] if isinstance(error, Problems) else str(error)
                problems.append(f"sweep.space: {key}={value!r} makes an invalid job: {where}: {msg}")
                break
    return problems
