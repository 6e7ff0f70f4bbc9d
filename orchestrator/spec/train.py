"""`train:` loss, optimizer, schedule, batches, epochs and early stopping (the one training loop's knobs)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec

Loss = Literal["cross_entropy", "bce", "mse", "mae", "huber", "dice_ce", "dice_focal"]
# Which head each loss trains: classification (softmax), binary (sigmoid), regression (linear),
# segmentation (one softmax per pixel: MONAI's Dice + cross-entropy, or Dice + focal).
LOSS_HEAD = {"cross_entropy": "softmax", "bce": "sigmoid", "mse": "linear", "mae": "linear", "huber": "linear",
             "dice_ce": "segmentation", "dice_focal": "segmentation"}
HEAD_LOSS = {"softmax": "cross_entropy", "sigmoid": "bce", "linear": "mse", "multilabel": "bce",
             "segmentation": "dice_ce"}


class OptimizerSpec(Spec):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("sgd", description="sgd | adam | adamw | rmsprop")
    lr: Annotated[float, Field(gt=0.0, description="learning rate")] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, description="sgd, rmsprop")] = 0.0
    nesterov: bool = Field(False, description="sgd with momentum > 0")
    weight_decay: Annotated[float, Field(ge=0.0, description="L2 penalty")] = 0.0

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: needs optimizer.name sgd with momentum > 0")
        if self.momentum and self.name not in ("sgd", "rmsprop"):
            raise ValueError(f"momentum: not used by '{self.name}' (sgd and rmsprop take it; adam has betas)")
        return self


class ScheduleSpec(Spec):
    """Learning-rate schedule, stepped once per epoch (federated: per local epoch across rounds)."""

    name: Literal["constant", "step", "cosine"] = Field("constant", description="constant | step | cosine")
    warmup_epochs: Annotated[int, Field(ge=0, description="linear ramp from lr/(warmup+1) to lr")] = 0
    step_size: Annotated[int, Field(ge=1, description="step: multiply by gamma every step_size epochs")] = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0, description="step: the factor")] = 0.5
    min_lr_fraction: Annotated[float, Field(ge=0.0, le=1.0, description="cosine: floor, as a fraction of lr")] = 0.0


class EarlyStoppingSpec(Spec):
    """Stop when a validation metric stops improving; the validation rows come out of the training rows."""

    enabled: bool = Field(False, description="centralized and ray jobs")
    metric: str = Field("val/loss", description="a validation metric, e.g. val/loss or val/f1_macro")
    mode: Literal["min", "max"] = Field("min", description="min | max")
    patience: Annotated[int, Field(ge=1, description="epochs without improvement before stopping")] = 5
    min_delta: Annotated[float, Field(ge=0.0, description="smallest change that counts as improvement")] = 0.0
    restore_best: bool = Field(True, description="end with the best epoch's weights")
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5, description="training rows held out")] = 0.15

    @model_validator(mode="after")
    def _check(self) -> EarlyStoppingSpec:
        if not self.metric.startswith("val/"):
            raise ValueError(f"metric: early stopping watches a validation metric such as val/loss or "
                             f"val/accuracy (got {self.metric!r})")
        return self


class AugmentSpec(Spec):
    """Random changes to each training image (never to evaluation), drawn from a generator seeded per
    hospital and round, so a run repeats. Images only (data.source images, or digits)."""

    flip: bool = Field(False, description="mirror left-right with probability 0.5")
    vflip: bool = Field(False, description="mirror top-bottom with probability 0.5")
    rotate: Annotated[float, Field(ge=0.0, le=180.0, description="rotate by up to this many degrees either way")] = 0.0
    shift: Annotated[float, Field(ge=0.0, le=0.5, description=(
        "move by up to this fraction of the side either way (a random crop of a padded image)"))] = 0.0
    jitter: Annotated[float, Field(ge=0.0, le=1.0, description=(
        "intensity: scale by 1 +- jitter and add +- jitter (brightness and contrast)"))] = 0.0

    @property
    def enabled(self) -> bool:
        return self.flip or self.vflip or self.rotate > 0 or self.shift > 0 or self.jitter > 0


class TrainSpec(Spec):
    loss: Loss | None = Field(None, description=(
        "null: the loss of model.head (softmax: cross_entropy, sigmoid: bce, linear: mse, segmentation: dice_ce); "
        "or mae | huber (regression), dice_focal (segmentation: Dice + focal loss)"))
    class_weights: list[Annotated[float, Field(gt=0.0)]] | Literal["balanced"] | None = Field(None, description=(
        "per-class loss weights in class order, or balanced (n / (classes x count))"))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    batch_size: Annotated[int, Field(gt=0, description="ray: the global batch, split over the workers")] = 32
    epochs: Annotated[int, Field(gt=0, description="centralized/ray: epochs; federated: local epochs per round")] = 1
    grad_clip: Annotated[float, Field(gt=0.0)] | None = Field(None, description="max global gradient norm per step")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    augment: AugmentSpec = Field(AugmentSpec.model_validate({}), description="training-side image augmentation")
