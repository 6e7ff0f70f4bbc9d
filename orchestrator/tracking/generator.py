"""Rows drawn from a logged generator (a federated GAN, `model.name: gan`): `consortium sample`."""
from __future__ import annotations


def sample_rows(tracking_uri: str | None, model_uri: str, n: int, seed: int = 0):
    """`consortium sample`: `n` rows drawn from a logged generator, as a table of its columns and label."""
    import mlflow
    import pandas as pd

    from orchestrator.spec.errors import UserError
    from orchestrator.tracking.runs import load_logged_model
    from orchestrator.tracking.stores import resolve_uri

    uri = resolve_uri(tracking_uri)
    model, _ = load_logged_model(uri, model_uri, "MODEL_URI")
    if not hasattr(model, "sample"):
        raise UserError("MODEL_URI", [f"{model_uri} is not a generator: rows are drawn from a model trained with "
                                      "model.name: gan (e.g. configs/gan_breast_cancer.yaml)"])
    meta = (mlflow.models.get_model_info(model_uri).metadata or {}).get("consortium.generator", {})
    X, y = model.sample(n, seed=seed)
    frame = pd.DataFrame(X, columns=meta.get("features") or [f"x{i}" for i in range(X.shape[1])])
    classes = meta.get("classes") or [str(c) for c in range(model.num_classes)]
    frame[meta.get("target", "label")] = [classes[i] for i in y]
    return frame
