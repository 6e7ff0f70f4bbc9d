"""`model:` the network: feedforward, CNN, recurrent or transformer, its head and transfer learning."""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec

Head = Literal["softmax", "sigmoid", "linear", "multilabel", "segmentation"]
SEQUENCE_MODELS = ("rnn", "lstm", "gru", "transformer")
# MONAI's networks, 2D, built without a hub (no pretrained download): `model.init_from` a weights file
MONAI_MODELS = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0")
IMAGE_MODELS = ("cnn", *MONAI_MODELS)
# MONAI's segmentation networks: a label per pixel (voxel), 2D or 3D
SEGMENTATION_MODELS = ("unet", "segresnet")


WEIGHT_FILES = (".safetensors", ".pt", ".pth")


class ModelSpec(Spec):
    name: Literal["mlp", "logistic", "cnn", "rnn", "lstm", "gru", "transformer", "gan", "resnet18", "resnet34",
                  "resnet50", "densenet121", "efficientnet_b0", "unet", "segresnet"] = Field("mlp", description=(
        "mlp | logistic | cnn (square images as flat pixel columns, e.g. digits 8x8) | resnet18 | resnet34 | "
        "resnet50 | densenet121 | efficientnet_b0 (MONAI's networks, 2D or 3D: model.spatial_dims, for data.source "
        "images) | rnn | lstm | gru | "
        "transformer (sequences as flat rows of steps x input_size columns) | gan (a generator and a "
        "discriminator of tabular rows, conditioned on the label: synthetic data, federated) | unet | segresnet "
        "(MONAI's segmentation networks, 2D or 3D: a label per pixel from the masks beside the images; "
        "model.head segmentation)"))
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [16, 32],
                                                        description=(
        "cnn: conv channels per layer; unet: channels per level (each level halves the size), e.g. "
        "[16, 32, 64]; segresnet: its first level's channels (the first value)"))
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64], description=(
        "mlp: layer widths; rnn/lstm/gru: hidden size per stacked layer; transformer: width per encoder layer"))
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = Field("relu", description="hidden activation")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, description="dropout probability")] = 0.0
    batchnorm: bool = Field(False, description="batch norm after hidden layers (mlp, cnn)")
    norm: Literal["batch", "group", "none"] | None = Field(None, description=(
        "normalisation layers: batch | group (GroupNorm: what Opacus and FedAvg need) | none; default: "
        "batch for the ResNets, DenseNet and EfficientNet, model.batchnorm for mlp and cnn"))
    groups: Annotated[int, Field(ge=1, description="norm: group: channels are split into this many groups")] = 8
    head: Head = Field("softmax", description=(
        "softmax: one output per class | sigmoid: one output, binary | linear: one output, regression | "
        "multilabel: one sigmoid output per finding, several findings per image (data.source images: a "
        "manifest's label cells list them, split by data.label_separator) | segmentation: a softmax over the "
        "mask's labels at every pixel (the default of unet and segresnet)"))
    spatial_dims: Literal[2, 3] = Field(2, description=(
        "cnn and MONAI's networks: 2 (images) | 3 (volumes: each NIfTI volume or multi-frame DICOM read whole, "
        "resized to data.image_size voxels along every axis; Conv3d / MONAI's 3D networks)"))
    patch_size: Annotated[int, Field(ge=8, le=1024, description=(
        "segmentation: training sees patches of patch_size pixels per axis, drawn from each image (half of them "
        "centred on a labelled pixel, seeded; padded where the image is smaller); evaluation and predict cover "
        "the whole image with overlapping windows blended by a Gaussian (MONAI's sliding_window_inference). "
        "Default: the whole image"))] | None = None
    input_size: Annotated[int, Field(ge=1, description="sequence models: features per time step")] = 1
    latent_dim: Annotated[int, Field(ge=1, description="gan: the generator's noise inputs")] = 16
    heads: Annotated[int, Field(ge=1, description="transformer: attention heads")] = 2
    init_from: str | None = Field(None, description=(
        "transfer learning: start from a logged model, models:/NAME/VERSION (or latest) or runs:/RUN_ID/model, "
        "or a local weights file (.safetensors, or a torch state dict .pt/.pth); layers whose names and shapes "
        "match are copied"))
    freeze: list[str] = Field(default_factory=list, description=(
        "parameter name prefixes kept fixed, e.g. [input, body] to train only the head"))

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.name in SEGMENTATION_MODELS and "head" not in self.model_fields_set:
            self.head = "segmentation"
        if self.norm is None:   # segmentation networks: GroupNorm (FedAvg averages it, Opacus accepts it)
            self.norm = "group" if self.name in SEGMENTATION_MODELS and not self.batchnorm else \
                "batch" if self.name in MONAI_MODELS or self.batchnorm else "none"
        if (self.head == "segmentation") != (self.name in SEGMENTATION_MODELS):
            raise ValueError(f"head: segmentation is the head of the segmentation networks ({', '.join(SEGMENTATION_MODELS)}); "
                             f"model.name is {self.name} and model.head {self.head}")
        if self.patch_size is not None and self.name not in SEGMENTATION_MODELS:
            raise ValueError(f"patch_size: patches and sliding windows are for the segmentation networks "
                             f"({', '.join(SEGMENTATION_MODELS)}), not {self.name}")
        if self.name in SEQUENCE_MODELS and len(set(self.hidden)) > 1:
            raise ValueError(f"hidden: stacked {self.name} layers share one width (got {self.hidden})")
        if self.name == "transformer" and self.hidden[0] % self.heads:
            raise ValueError(f"heads: the transformer width hidden[0]={self.hidden[0]} must divide by heads={self.heads}")
        if self.init_from is not None and not re.match(r"^(models|runs):/.+", self.init_from) \
                and not self.init_from.endswith(WEIGHT_FILES):
            raise ValueError(f"init_from: expected models:/NAME/VERSION, runs:/RUN_ID/model or a weights file "
                             f"({' | '.join(WEIGHT_FILES)}) (got {self.init_from!r})")
        if self.norm is not None and self.batchnorm and self.norm != "batch":
            raise ValueError(f"norm: '{self.norm}' and batchnorm: true disagree: set one of them")
        if self.spatial_dims == 3 and self.name not in (*IMAGE_MODELS, *SEGMENTATION_MODELS):
            raise ValueError(f"spatial_dims: 3 is for the image networks ({', '.join(IMAGE_MODELS)}, "
                             f"{', '.join(SEGMENTATION_MODELS)}), not {self.name}")
        if self.name == "unet" and len(self.channels) < 2:
            raise ValueError(f"channels: a unet needs two or more levels, e.g. [16, 32, 64] (got {self.channels})")
        if self.name == "efficientnet_b0" and self.norm == "none":
            raise ValueError("norm: efficientnet_b0 needs batch or group norm")
        return self
