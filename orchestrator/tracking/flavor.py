"""The logged model as a person uses it: a hospital's export in, the answer out.

One MLflow model with two flavors:
  pytorch          `mlflow.pytorch.load_model(URI)` gives the nn.Module (transfer learning, notebooks);
  python_function  loaded by this module: raw feature columns by name in (unscaled: the model holds
                   the consortium's scaling; a text column as text, one-hot encoded with the
                   consortium's agreed values, an unknown value as `other`), `prediction` (the class label) and `probability_<class>`
                   per class out; a regression model's `prediction` is in target units.
The signature names every feature column, so MLflow refuses rows that lack one (the scoring server
with HTTP 400). A text column is `string`; a number column is `Any`, because a hospital's export
holds a number column in either of two dtypes that no one MLflow type accepts both of: pandas reads
`age` as int64 when every cell is filled and as float64 (NaN) when one is empty; MLflow's `double`
refuses int64 ("Can not safely convert int64 to float64") and its `long` refuses float64. MLflow's
own word for a field that "can have multiple types" is AnyType, which it does not check: the
predictor does, and refuses text in a number column naming the column and row (HTTP 400 from the
scoring server), as MLflow's `double` did. A missing value (null, NaN) is filled with the
consortium's training mean of that column, the value the model was scaled around.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CARD_KEY = "consortium"   # the MLmodel's metadata entry: features, classes, head, fill values


def card(features, classes, head: str, fill, columns=(), categories=()) -> dict:
    """`features`: the model's inputs; `columns` (when the data has text columns): the raw columns a
    caller sends, `categories` their agreed values (the model's one-hot inputs, then `other`)."""
    out = {"features": [str(f) for f in features], "classes": [str(c) for c in classes], "head": head,
           "fill": [float(v) for v in np.asarray(fill, dtype=np.float64)]}
    if categories:
        out.update(columns=[str(c) for c in columns], categories={c: list(v) for c, v in categories})
    return out


def columns_of(card: dict) -> list[str]:
    """The columns a caller sends: the raw ones (text columns as text)."""
    return card.get("columns") or card["features"]


def raw_rows(card: dict, rows: np.ndarray):
    """Model inputs back as the raw table a caller would send (a one-hot block as its value)."""
    import pandas as pd

    rows = np.asarray(rows, dtype=np.float64)
    if not card.get("categories"):
        return pd.DataFrame(rows, columns=card["features"])
    index = {f: i for i, f in enumerate(card["features"])}
    out = {}
    for col in card["columns"]:
        values = card["categories"].get(col)
        if values is None:
            out[col] = rows[:, index[col]]
            continue
        block = rows[:, [index[f"{col}={v}"] for v in values] + [index[f"{col}=other"]]]
        out[col] = [(values + ["other"])[int(i)] if block[r].max() > 0 else None
                    for r, i in enumerate(block.argmax(1))]
    return pd.DataFrame(out)


def save_model(path, mlflow_model, pytorch_model, card: dict, signature=None, input_example=None,
               pip_requirements=None, **kwargs) -> None:
    """`mlflow.models.Model.log(flavor=this module)` calls this: the pytorch flavor as MLflow writes
    it (traced from a tensor of the example rows: its pt2 format needs one), then the column
    signature, the example as a table of named columns, this module as the python_function loader
    and the card in the model's metadata."""
    import mlflow.pytorch

    from orchestrator.adapters.mlflow import save_example

    if image_dims(card) is not None:   # the example is images: the network reads them as rows of pixels
        tensor_example = np.asarray(input_example, dtype=np.float32).reshape(len(input_example), -1)
    else:
        tensor_example = model_inputs(card, input_example)
    # a segmentation network slides windows over an image of any size (data-dependent control flow,
    # which torch.export's pt2 cannot trace): pickled, as mlflow.pytorch saved models before pt2
    fmt = "pickle" if card.get("head") == "segmentation" else None
    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, input_example=tensor_example,
                              pip_requirements=pip_requirements, serialization_format=fmt)
    for name in ("input_example.json", "serving_input_example.json"):
        Path(path, name).unlink(missing_ok=True)
    mlflow_model.signature = signature
    save_example(mlflow_model, input_example, path)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), CARD_KEY: card}
    mlflow_model.save(os.path.join(path, "MLmodel"))


def number_columns(card: dict) -> list[str]:
    """The columns a caller sends as numbers (every column but the text ones)."""
    text = card.get("categories") or {}
    return [c for c in columns_of(card) if c not in text]


def text_in_numbers(frame, card: dict) -> list[tuple[str, int, object]]:
    """(column, position, value) of the first cell per number column that holds text, not a number
    or an empty cell: int64, float64 with NaN, numbers written as text ("61") all pass."""
    import pandas as pd

    found = []
    for col in number_columns(card):
        if col not in frame.columns:
            continue
        values = frame[col]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            found.append((col, i, values.iloc[i]))
    return found


def model_inputs(card: dict, frame) -> np.ndarray:
    """Raw rows -> the model's float32 inputs: text columns one-hot with the agreed values, a
    missing number filled with the consortium's training mean."""
    if card.get("categories"):
        from orchestrator.core.columns import encode

        X = encode(frame, columns_of(card), {c: tuple(v) for c, v in card["categories"].items()})
    else:
        import pandas as pd

        X = np.stack([pd.to_numeric(frame[f], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
                      for f in card["features"]], axis=1) if card["features"] else np.zeros((len(frame), 0), np.float32)
    fill = np.asarray(card["fill"], dtype=np.float32)
    return np.where(np.isnan(X), fill[None, :], X).astype(np.float32)


def preprocess(card: dict):
    """The image reading an image model was trained with (its card's `image`), for predict and serve."""
    from orchestrator.core.imaging.readers import Preprocess

    image = card["image"]
    return Preprocess(int(image["size"]), int(image["channels"]), image["fit"],
                      tuple(image["window"]) if image.get("window") else None,
                      tuple(image["spacing"]) if image.get("spacing") else None, int(image.get("dims", 2)))


def image_dims(card: dict) -> tuple[int, ...] | None:
    """(channels, rows, columns) of an image model's input, (channels, slices, rows, columns) of a
    volume model's; None for a model of columns."""
    image = card.get("image")
    if not image:
        return None
    return (int(image["channels"]), *(int(image["size"]),) * int(image.get("dims", 2)))


def signature_and_example(card: dict, rows: np.ndarray):
    """The signature and an input example: raw rows (a DataFrame, one column per feature), or for an
    image model a tensor (images, channels, rows, columns) of float32 pixels in [0, 1]."""
    import pandas as pd
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    dims = image_dims(card)
    if dims is not None:
        images = np.asarray(rows, dtype=np.float32).reshape(-1, *dims)
        outputs = infer_signature(images, Predictor(None, card).describe(len(images))).outputs
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *dims))]), outputs=outputs), images
    example = raw_rows(card, rows)
    text = card.get("categories", {})
    inputs = Schema([ColSpec(DataType.string if c in text else AnyType(), c) for c in columns_of(card)])
    outputs = infer_signature(example, Predictor(None, card).describe(len(example))).outputs

    return ModelSignature(inputs=inputs, outputs=outputs), example


class Predictor:
    """What the python_function flavor serves: a DataFrame of raw rows -> a DataFrame of answers."""

    def __init__(self, net, card: dict):
        self.net, self.card = net, card
        self.features = columns_of(card)   # what a caller sends
        self.classes = card["classes"]

    def describe(self, n: int):
        """An answer of the right shape (for the output signature)."""
        import pandas as pd

        if not self.classes:
            return pd.DataFrame({"prediction": np.zeros(n)})
        if self.card["head"] == "segmentation":
            side = (int(self.card["image"]["size"]),) * int(self.card["image"].get("dims", 2))
            return self._masks(np.zeros((n, *side), dtype=np.int64), None)
        cols = {"prediction": [self.classes[0]] * n}
        cols.update({f"probability_{c}": np.zeros(n) for c in self.classes})
        return pd.DataFrame(cols)

    def predict(self, model_input, params=None):
        import pandas as pd
        import torch

        dims = image_dims(self.card)
        if dims is not None and not isinstance(model_input, pd.DataFrame):   # images (n, channels, rows, cols)
            images = np.asarray(model_input, dtype=np.float32)
            if images.ndim == len(dims):
                images = images[None]
            if tuple(images.shape[1:]) != dims:
                from mlflow.exceptions import MlflowException

                raise MlflowException.invalid_parameter_value(
                    f"images of shape {list(images.shape[1:])}: this model reads (channels, rows, columns) "
                    f"= {list(dims)} (POST image files to /images to have them read and resized)")
            model_input = pd.DataFrame(images.reshape(len(images), -1), columns=self.features)
        elif not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(np.asarray(model_input), columns=self.features)
        bad = text_in_numbers(model_input, self.card)
        if bad:   # the check MLflow's `double` made, which its `Any` type leaves to the model
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value("; ".join(
                f"column '{col}' takes numbers: row {model_input.index[i]!r} holds {value!r}"
                for col, i, value in bad))
        X = model_inputs(self.card, model_input)
        with torch.no_grad():
            out = self.net(torch.as_tensor(X)).float()
        if not self.classes:
            return pd.DataFrame({"prediction": out[:, 0].numpy().astype(np.float64)}, index=model_input.index)
        if self.card["head"] == "multilabel":   # each finding its own probability; the prediction lists those >= 0.5
            probs = torch.sigmoid(out).numpy()
            sep = self.card.get("label_separator", "|")
            answer = {"prediction": [sep.join(c for c, p in zip(self.classes, row) if p >= 0.5)
                                     or self.card.get("no_finding") or "" for row in probs]}
            answer.update({f"probability_{c}": probs[:, j].astype(np.float64) for j, c in enumerate(self.classes)})
            return pd.DataFrame(answer, index=model_input.index)
        if self.card["head"] == "segmentation":
            return self._masks(out.argmax(1).numpy(), model_input.index)
        if self.card["head"] == "sigmoid":
            p1 = torch.sigmoid(out[:, 0])
            probs = torch.stack([1 - p1, p1], 1).numpy()
        else:
            probs = torch.softmax(out, 1).numpy()
        answer = {"prediction": [self.classes[i] for i in probs.argmax(1)]}
        answer.update({f"probability_{c}": probs[:, j].astype(np.float64) for j, c in enumerate(self.classes)})
        return pd.DataFrame(answer, index=model_input.index)


    def _masks(self, labels: np.ndarray, index):
        """Segmentation: each image's mask (nested lists of the masks' own label values, on the model's
        grid) and its pixels of each label."""
        import pandas as pd

        values = np.asarray(self.card.get("values") or range(len(self.classes)), dtype=np.int64)
        masks = values[labels]
        answer: dict = {"mask": [m.tolist() for m in masks]}
        flat = labels.reshape(len(labels), -1)
        answer.update({f"pixels_{c}": (flat == j).sum(1).astype(np.int64) for j, c in enumerate(self.classes)})
        return pd.DataFrame(answer, index=index)


def _load_pyfunc(data_path, model_config=None) -> Predictor:
    """MLflow's pyfunc loader hook: `data_path` is the model's data/ folder."""
    import mlflow.pytorch
    from mlflow.models import Model

    root = Path(data_path).parent
    meta = Model.load(str(root / "MLmodel")).metadata or {}
    return Predictor(mlflow.pytorch.load_model(str(root), map_location="cpu"), meta[CARD_KEY])


def check_columns(frame, features: list[str], where: str) -> list[str]:
    """What is wrong with the columns of a batch of rows (MLflow ignores extra columns silently:
    a misnamed column would then be reported as a missing one, or not at all)."""
    problems = []
    missing = [f for f in features if f not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in set(features)]
    if missing:
        problems.append(f"{where}: missing column(s) {missing}")
    if extra:
        problems.append(f"{where}: column(s) the model does not know {extra} (expected exactly: {features})")
    return problems
