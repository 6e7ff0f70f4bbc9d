"""After a federated GAN (`model.name: gan`): what the generator is worth, and the generator itself.

The server draws synthetic rows from the final generator with the consortium's label shares (the
census's counts), keeps a sample as `synthetic/sample.csv`, and runs the standard utility check
"train on synthetic, test on real" (TSTR): a classifier (an MLP, the same for both) trained only on
generated rows and scored on the real central held-out split (`tstr/synthetic_*`), beside the same
classifier trained on the hospitals' real training rows (`tstr/real_*`). The server never sees a
hospital's row: the real-row reference is computed in simulation only, outside the federation, by
the process that plays every hospital (a deployment has no pooled rows anywhere, and no tstr/real_*).
The generator is logged whole (pickled, so `consortium sample` can draw from it) and registered.
"""
from __future__ import annotations

import numpy as np

SAMPLE_ROWS = 500
CLASSIFIER = {"name": "mlp", "hidden": [32]}
CLASSIFIER_TRAIN = {"optimizer": {"name": "adam", "lr": 0.01}, "batch_size": 32, "epochs": 30}


def classifier_scores(job, plan, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The TSTR classifier trained on (X, y), scored on the central held-out rows."""
    import torch

    from orchestrator.core.models import build_model, prepare
    from orchestrator.core.training import Objective, evaluate, tensors, train_epochs
    from orchestrator.spec.model import ModelSpec
    from orchestrator.spec.train import TrainSpec

    spec, train = ModelSpec.model_validate(CLASSIFIER), TrainSpec.model_validate(CLASSIFIER_TRAIN)
    torch.manual_seed(job.seed)
    model = build_model(spec, plan.num_features, plan.num_classes)
    prepare(model, X, y, job.data.standardize)
    objective = Objective("softmax", "cross_entropy", plan.num_classes)
    train_epochs(model, *tensors(X, y), train, train.epochs, seed=job.seed, objective=objective)
    central = plan.central
    scores = evaluate(model, *tensors(central.X_test, central.y_test), objective)
    return {k: v for k, v in scores.items() if k in ("accuracy", "f1_macro", "auroc")}


def real_rows(job, plan) -> tuple[np.ndarray, np.ndarray] | None:
    """The hospitals' training rows pooled, each imputed from its own: simulation only."""
    if job.federated.engine == "deployment":
        return None
    from orchestrator.core.splits import column_fill, fill
    from orchestrator.jobs.sites import load_hospitals

    X, y = [], []
    for h in load_hospitals(job, plan):
        X.append(fill(h.raw.X_train, column_fill(h.raw.X_train, job.data.impute)))
        y.append(h.raw.y_train)
    return np.concatenate(X).astype(np.float32), np.concatenate(y)


def finish_gan(job, plan, run, model, label_counts: np.ndarray | None):
    """Label shares into the generator, the sample, TSTR, the logged generator; returns
    (final metrics, model record or None)."""
    import torch

    counts = (np.asarray(label_counts, dtype=np.float64).sum(0) if label_counts is not None
              else np.ones(plan.num_classes))
    model.prior.copy_(torch.as_tensor(counts / counts.sum(), dtype=model.prior.dtype))
    n = int(max(counts.sum(), SAMPLE_ROWS))
    X_syn, y_syn = model.sample(n, seed=job.seed)
    final: dict[str, float] = {"synthetic/rows": float(n)}
    if job.tracking.enabled:
        import pandas as pd

        frame = pd.DataFrame(X_syn[:SAMPLE_ROWS], columns=list(plan.schema.features))
        frame[job.data.target or "label"] = [plan.schema.classes[i] for i in y_syn[:SAMPLE_ROWS]]
        run.log_text(frame.to_csv(index=False), "synthetic/sample.csv")
    if plan.central is not None:
        final.update({f"tstr/synthetic_{k}": v for k, v in classifier_scores(job, plan, X_syn, y_syn).items()})
        real = real_rows(job, plan)
        if real is not None:
            final.update({f"tstr/real_{k}": v for k, v in classifier_scores(job, plan, *real).items()})
    run.log_metrics(final, 0)
    run.flush()
    record = None
    if job.tracking.enabled and job.tracking.log_model:
        metadata = {"consortium.generator": {"features": list(plan.schema.features),
                                             "classes": list(plan.schema.classes),
                                             "target": job.data.target or "label"}}
        record = run.log_pickled_model(model, job.tracking.register_model, metadata)
    return final, record

