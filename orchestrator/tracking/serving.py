"""`consortium serve` and `consortium predict`: a registered model answers rows of a hospital's export.

`serve` runs MLflow's scoring server (`/invocations`, `/ping`, `/health`, `/version`: the same app
`mlflow models serve --env-manager local` runs) in this environment, on 127.0.0.1 by default, with
one check more than MLflow makes: a column the model does not know is refused (MLflow drops it
silently, so a misspelt column would be served as if it were missing data). Bad rows get a 400 with
the reason, never a 500.

`predict` writes the answers next to the rows: ROWS.predictions.csv, every input column followed by
`prediction` and, for a classifier, `probability_<class>` per class.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.spec.errors import UserError
from orchestrator.tracking.flavor import preprocess


def _open(model_uri: str, tracking_uri: str, info_only: bool = False):
    """The loaded pyfunc model (or, with info_only, only its MLmodel: quick, no torch)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        if info_only:
            return mlflow.models.get_model_info(model_uri)
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - a wrong name/version/run: said plainly, exit 2
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(model_uri, [f"cannot load the model from {tracking_uri}: {first} "
                                    "(`consortium models` lists the registered ones)"]) from None


def _features(model) -> list[str] | None:
    schema = model.metadata.get_input_schema()
    return schema.input_names() if schema is not None and schema.has_input_names() else None


class _ParsingMetadata:
    """The model's MLmodel as the scoring server's request parser reads it: only its text columns
    typed. MLflow parses a CSV body with `pd.read_csv(dtype=<every column's pandas type>)`, which
    fails outright on a number column's `Any` type (tracking.flavor says why they are `Any`); the
    number columns are left to pandas and checked by the model itself."""

    def __init__(self, metadata):
        self._metadata = metadata

    def __getattr__(self, name):
        return getattr(self._metadata, name)

    def get_input_schema(self):
        from mlflow.types import DataType, Schema

        schema = self._metadata.get_input_schema()
        if schema is None or not schema.has_input_names():
            return schema
        typed = [c for c in schema.inputs if c.type == DataType.string]
        return Schema(typed) if typed else None


class StrictModel:
    """The loaded model as the scoring server sees it, refusing columns it does not know (400)."""

    def __init__(self, model):
        self.model = model
        self.metadata = _ParsingMetadata(model.metadata)
        self.features = _features(model)

    def predict(self, data, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException

        from orchestrator.tracking.flavor import check_columns

        if self.features is not None and isinstance(data, pd.DataFrame):
            problems = check_columns(data, self.features, "request")
            if problems:
                raise MlflowException.invalid_parameter_value("; ".join(problems))
        return self.model.predict(data, params=params)


def scoring_app(model_uri: str, tracking_uri: str):
    """MLflow's scoring app; for an image model also `POST /images`: image files as they are."""
    from mlflow.pyfunc import scoring_server

    from orchestrator.tracking.flavor import CARD_KEY

    model = _open(model_uri, tracking_uri)
    app = scoring_server.init(StrictModel(model))
    card = (model.metadata.metadata or {}).get(CARD_KEY) or {}
    if card.get("image"):
        add_image_route(app, model, card)
    return app


# What an upload's name says it is, else its first bytes (Pillow reads any picture by its content).
MEDIA_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif", "application/dicom": ".dcm"}


def upload_suffix(name: str | None, content_type: str | None, data: bytes) -> str:
    if name:
        lower = name.lower()
        for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
            if lower.endswith(suffix):
                return suffix
    if content_type in MEDIA_SUFFIX:
        return MEDIA_SUFFIX[content_type]
    if data[128:132] == b"DICM":
        return ".dcm"
    if data[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return ".nii"
    return ".img"   # a picture: Pillow finds its format in its bytes


def read_uploads(files: list[tuple[str, bytes, str | None]], card: dict, grids: list | None = None):
    """(images as the model reads them (n, channels, size, size), problems by file name): each file
    decoded with the preprocessing the model was trained with, as `consortium predict` does.
    `grids`, if given, receives each read file's (grid, spacing): where a mask goes back to."""
    import tempfile

    import numpy as np

    from orchestrator.core.imaging.readers import UnreadableImage, read_image
    from orchestrator.tracking.flavor import image_dims

    pre = preprocess(card)
    images, problems = [], []
    with tempfile.TemporaryDirectory(prefix="consortium-upload-") as tmp:
        for i, (name, data, content_type) in enumerate(files):
            path = Path(tmp) / f"upload{i}{upload_suffix(name, content_type, data)}"
            path.write_bytes(data)
            try:
                images.append(read_image(path, pre))
                if grids is not None:
                    from orchestrator.core.imaging.masks import image_grid, image_spacing

                    grids.append((image_grid(path, pre.dims), image_spacing(path)))
            except UnreadableImage as exc:
                problems.append(f"{name or f'file {i + 1}'}: {exc}")
    dims = image_dims(card) or pre.shape
    return np.stack(images).astype(np.float32) if images else np.zeros((0, *dims), np.float32), problems


def add_image_route(app, model, card: dict) -> None:
    """`POST /images`: one image file as the body (its name in `?name=`, else its Content-Type or
    its first bytes say what it is), or JSON {"images": [{"name": ..., "data": BASE64}, ...]}.
    Answers {"predictions": [{"name", "prediction", "probability_<class>" ...}]}; a file that
    cannot be read is a 400 naming it and why."""
    import base64
    import binascii
    import json

    import pandas as pd
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def images(request: Request):
        body = await request.body()
        files: list[tuple[str, bytes, str | None]]
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                sent = json.loads(body)["images"]
                files = [(str(f.get("name") or f"file {i + 1}"), base64.b64decode(f["data"], validate=True), None)
                         for i, f in enumerate(sent)]
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
                return JSONResponse({"error_code": "BAD_REQUEST", "message": (
                    'expected {"images": [{"name": "scan.dcm", "data": "<base64 of the file>"}, ...]}: '
                    f"{type(exc).__name__}: {str(exc)[:200]}")}, status_code=400)
        else:
            name = request.query_params.get("name")
            files = [(name or "the body", body, content_type or None)]
        if not files or not any(len(f[1]) for f in files):
            return JSONResponse({"error_code": "BAD_REQUEST", "message": "no image sent"}, status_code=400)
        import asyncio

        grids: list = []
        pixels, problems = await asyncio.to_thread(read_uploads, files, card, grids)
        if problems:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": "; ".join(problems[:8])}, status_code=400)
        answers = pd.DataFrame(await asyncio.to_thread(model.predict, pixels))
        if card.get("head") == "segmentation":   # each mask on its upload's own grid, as predict writes it
            answers["mask"] = [_on_grid(m, g, card) for m, g in zip(answers["mask"], grids)]
        rows = [{"name": f[0], **{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}}
                for f, row in zip(files, answers.to_dict(orient="records"))]
        return JSONResponse({"predictions": rows})

    images.__annotations__["request"] = Request   # a class, not this module's postponed string: FastAPI injects it
    app.post("/images")(images)


def _on_grid(mask, grid: tuple, card: dict) -> list:
    import numpy as np

    from orchestrator.core.imaging.writers import to_file_grid

    shape, spacing = grid
    labels = np.asarray(mask, dtype=np.int64)
    pre = preprocess(card)
    return (to_file_grid(labels, shape, pre, spacing) if shape is not None else labels).tolist()


def serve(model_uri: str, tracking_uri: str | None, host: str, port: int, log=print) -> None:
    from orchestrator.process import stop_on_sigterm
    from orchestrator.tracking.store import resolve_uri
    from orchestrator.tracking.ui import _port_free, stop, wait_healthy

    uri = resolve_uri(tracking_uri)
    from orchestrator.tracking.flavor import CARD_KEY

    info = _open(model_uri, uri, info_only=True)  # a wrong URI is exit 2 here, not a dead child
    image = "image" in ((info.metadata or {}).get(CARD_KEY) or {})
    if not _port_free(port, host):
        raise UserError("--port", [f"{host}:{port} is in use: pick another with --port"])
    stop_on_sigterm()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "orchestrator.tracking.serving", model_uri, host, str(port)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        wait_healthy(port, proc, timeout=120, what=f"the model server for {model_uri}", host=host)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if image:
            how = (f"  POST http://{shown}:{port}/images?name=scan.dcm  (the file as the body: PNG, JPEG, TIFF, "
                   f"DICOM, NIfTI; or JSON {{\"images\": [{{\"name\": ..., \"data\": BASE64}}]}})\n"
                   f"  POST http://{shown}:{port}/invocations  (JSON {{\"inputs\": images x channels x rows x "
                   f"columns, pixels in [0, 1]}})")
        else:
            how = (f"  POST http://{shown}:{port}/invocations  (JSON {{\"dataframe_split\": {{\"columns\": [...], "
                   f"\"data\": [[...]]}}}} or CSV)")
        log(f"serving {model_uri} (up in {time.monotonic() - t0:.1f} s)\n{how}\nCtrl-C stops it.")
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)


def predict(model_uri: str, rows: Path, out: Path | None, tracking_uri: str | None) -> tuple[Path, int]:
    import numpy as np
    import pandas as pd

    from orchestrator.tracking.flavor import CARD_KEY, check_columns, text_in_numbers
    from orchestrator.tracking.store import resolve_uri

    if rows.is_dir() or rows.suffix.lower() == ".csv" and _image_model(model_uri, tracking_uri):
        return predict_images(model_uri, rows, out, tracking_uri)
    if not rows.is_file():
        raise UserError(str(rows), ["no such file: expected a CSV of rows with the model's feature columns"])
    try:
        frame = pd.read_csv(rows)
    except Exception as exc:  # noqa: BLE001
        raise UserError(str(rows), [f"not a readable CSV: {str(exc).splitlines()[0][:200]}"]) from None
    model = _open(model_uri, resolve_uri(tracking_uri))
    features = _features(model)
    if features is not None:
        problems = check_columns(frame, features, str(rows))
        if problems:
            raise UserError(str(rows), problems)
        schema = model.metadata.get_input_schema()
        text = {c.name for c in schema.inputs if getattr(c.type, "name", str(c.type)) == "string"}
        for col in text:   # a category: sent as text (a file may hold only digits there), encoded by the model
            frame[col] = frame[col].map(lambda v: v if pd.isna(v) else str(v))
        card = (model.metadata.metadata or {}).get(CARD_KEY)
        if card:   # text in a number column: said with the file's line, before MLflow sees the rows
            bad = text_in_numbers(frame, card)
            if bad:
                raise UserError(str(rows), [f"column '{col}', row {i + 2}: {value!r} is not a number"
                                            for col, i, value in bad])
    answers = model.predict(frame[features] if features else frame)
    out = out or rows.with_name(rows.stem + ".predictions.csv")
    pd.concat([frame.reset_index(drop=True), pd.DataFrame(answers).reset_index(drop=True)], axis=1).to_csv(out, index=False)
    return out, len(frame)


def _main() -> None:
    """The server process `serve` starts: MLflow's scoring app under uvicorn."""
    import logging

    import uvicorn

    model_uri, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    app = scoring_app(model_uri, os.environ["MLFLOW_TRACKING_URI"])
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    _main()


def _image_model(model_uri: str, tracking_uri: str | None) -> bool:
    from orchestrator.tracking.flavor import CARD_KEY
    from orchestrator.tracking.store import resolve_uri

    info = _open(model_uri, resolve_uri(tracking_uri), info_only=True)
    return "image" in ((info.metadata or {}).get(CARD_KEY) or {})


def predict_images(model_uri: str, where: Path, out: Path | None, tracking_uri: str | None) -> tuple[Path, int]:
    """One row per image file of a folder (class folders, a manifest, or loose files) or of a
    manifest CSV: its path, its label where the export names one, the prediction and the class
    probabilities; every file read with the preprocessing the model was trained with."""
    import pandas as pd

    from orchestrator.core.imaging.readers import UnreadableImage, is_image, read_image
    from orchestrator.spec.data import DataSpec
    from orchestrator.spec.errors import DataError
    from orchestrator.tracking.flavor import CARD_KEY
    from orchestrator.tracking.store import resolve_uri

    model = _open(model_uri, resolve_uri(tracking_uri))
    card = (model.metadata.metadata or {}).get(CARD_KEY) or {}
    image = card.get("image")
    if image is None:
        raise UserError(model_uri, ["this model was not trained on images: predict a CSV of its feature columns"])
    if card.get("head") == "segmentation":   # a mask per case, in its image's format and grid
        from orchestrator.tracking.segment import predict_masks

        return predict_masks(model, card, where, out)
    pre = preprocess(card)
    folder = where if where.is_dir() else where.parent
    spec = DataSpec.model_validate({"source": "images", "path": str(folder),
                                    "manifest": None if where.is_dir() else where.name})
    paths: list[Path]
    labels: list[str] | None
    try:
        from orchestrator.core.imaging.folders import list_samples

        samples = list_samples(folder, spec)
        paths, labels = samples.paths, samples.labels
    except DataError:
        if where.is_file():
            raise
        paths, labels = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p)), None
    if not paths:
        raise UserError(str(where), ["no image files (.png .jpg .tif .dcm .nii .nii.gz) found"])
    pixels, bad = [], []
    for p in paths:
        try:
            pixels.append(read_image(p, pre).reshape(-1))
        except UnreadableImage as exc:
            bad.append(f"{p}: {exc}")
    if bad:
        raise UserError(str(where), bad[:8] + ([f"... and {len(bad) - 8} more"] if len(bad) > 8 else []))
    import numpy as np

    from orchestrator.tracking.flavor import image_dims

    images = np.stack(pixels).astype(np.float32).reshape(len(pixels), *(image_dims(card) or (-1,)))
    answers = pd.DataFrame(model.predict(images)).reset_index(drop=True)
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    if labels is not None:
        table["label"] = labels
    out = out or (folder / "predictions.csv" if where.is_dir() else where.with_name(where.stem + ".predictions.csv"))
    pd.concat([table, answers], axis=1).to_csv(out, index=False)
    return out, len(paths)
