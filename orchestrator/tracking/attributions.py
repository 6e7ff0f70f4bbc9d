"""Integrated gradients (Captum) for every model family: which inputs moved the model's answer.

For each held-out row, the attribution of every input to the answer (the predicted class's logit,
or a regression's output) is integrated along the straight path from a baseline to the row
(Sundararajan et al., 2017). The baseline is the consortium's mean row (the input the model's
scaling centres on: "an average patient"), so an attribution says how far this row's value moved
the answer away from the average patient's. Reported as the mean absolute attribution per input:
  tabular (mlp, logistic)            a ranked table and bar chart per feature (a text column's
                                     one-hot inputs summed back into the column)
  cnn (square images)                an image of the mean |attribution| per pixel
  rnn / lstm / gru / transformer     a heat strip: channels x time steps
Computed by the party that holds the rows: the server's central split or the pooled test split.
"""
from __future__ import annotations

import numpy as np
import torch

from orchestrator.core.attribution import integrated_gradients
from orchestrator.core.models import image_shape
from orchestrator.spec.model import IMAGE_MODELS, SEQUENCE_MODELS


def column_totals(values: np.ndarray, features: list[str], schema) -> tuple[list[str], np.ndarray]:
    """A text column's one-hot inputs summed back into the column (what a person named)."""
    if not schema.categories:
        return list(features), values
    index = {f: i for i, f in enumerate(features)}
    names, totals = [], []
    vocab = schema.vocabulary
    for col in schema.raw_columns:
        if col in vocab:
            idx = [index[f"{col}={v}"] for v in vocab[col]] + [index[f"{col}=other"]]
            totals.append(float(values[idx].sum()))
        else:
            totals.append(float(values[index[col]]))
        names.append(col)
    return names, np.asarray(totals)


def _overlays(run, job, model: torch.nn.Module, split, classes: list[str], channels: int, side: int,
              count: int = 4) -> None:
    """A few held-out images with their own attribution map laid over them (simulation only: the
    server's central split; in a deployment no image leaves a hospital)."""
    from orchestrator.core.models import standardizer
    from orchestrator.tracking import plots

    baseline = standardizer(model).mean.detach().cpu().numpy()
    multilabel = split.y_test.ndim == 2
    _, first = np.unique(split.y_test, return_index=True, axis=0 if multilabel else None)   # each class first
    pick = list(np.sort(first)[:count]) + [i for i in range(len(split.y_test)) if i not in set(first)]
    pick = pick[:count]
    X, y = split.X_test[pick], split.y_test[pick]
    maps = [integrated_gradients(model, X[i : i + 1], baseline, True).reshape(channels, side, side).sum(0)
            for i in range(len(X))]
    images = [x.reshape(channels, side, side).mean(0) for x in X]
    with torch.no_grad():
        out = model(torch.as_tensor(X, dtype=torch.float32))
    if multilabel:   # the findings shown -> the findings said (sigmoid >= 0.5)
        def said(row) -> str:
            return "|".join(c for c, v in zip(classes, row) if v) or "none"

        titles = [f"{said(t > 0.5)} -> {said(p)}" for t, p in zip(y, (out >= 0).tolist())]
    else:
        titles = [f"{classes[int(t)]} -> {classes[p]}" for t, p in zip(y, out.argmax(1).tolist())]
    fig = plots.overlays(images, maps, titles, f"{job.name}: integrated gradients on held-out images")
    run.log_figure(fig, "plots/attributions_overlays.png")
    plots.close(fig)


def explain_attributions(run, job, plan, model: torch.nn.Module, at_hospitals: tuple | None = None) -> dict | None:
    """Log integrated gradients for the job's model on the held-out rows (the server's or the pooled
    test rows), else the hospitals' own (`at_hospitals`: mean per input, rows, hospitals); None when
    there are no rows to explain on."""
    from orchestrator.core.models import standardizer
    from orchestrator.tracking import plots

    split = plan.central if job.kind == "federated" else plan.centralized
    extra = {}
    if split is not None and len(split.y_test) >= 2:
        X = split.X_test[: job.explain.max_rows]
        baseline = standardizer(model).mean.detach().cpu().numpy()
        values, rows = integrated_gradients(model, X, baseline, not plan.regression), len(X)
        where = "central held-out split" if job.kind == "federated" else "test split"
    elif at_hospitals is not None:
        values, rows, answered = at_hospitals
        where = "hospitals' own test rows"
        extra = {"hospitals": int(answered), "pooled": "mean over hospitals weighted by their test rows; "
                 "only the per-input means left each hospital"}
    else:
        return None
    name = job.model.name
    record = {"method": "integrated_gradients", "baseline": "the consortium's mean row", "steps": 32,
              "rows": int(rows), "evaluated_on": where, "target": "the prediction" if plan.regression
              else "the finding the model is surest of" if plan.task == "multilabel" else "predicted class", **extra}
    dims = job.model.spatial_dims
    if name in IMAGE_MODELS and image_shape(len(values), dims) is not None:
        channels, side = image_shape(len(values), dims) or (1, 0)
        image = values.reshape(channels, *(side,) * dims).sum(0)   # channels summed: where the model looks
        what = "pixel"
        if dims == 3:   # a volume's map: every voxel kept in the record, its maximum over the slices drawn
            record["volume"] = image.round(6).tolist()
            image, what = image.max(0), "voxel (maximum over the axial slices)"
        record["image"] = image.round(6).tolist()
        fig = plots.heatmap(image, f"{job.name}: integrated gradients, mean |attribution| per {what}\n({where})")
        artifact = "plots/attributions_pixels.png"
        if split is not None and len(split.y_test) >= 2 and job.data.source == "images" and dims == 2:
            _overlays(run, job, model, split, list(plan.schema.classes), channels, side)
    elif name in SEQUENCE_MODELS:
        channels = job.model.input_size
        strip = values.reshape(-1, channels).T   # channels x steps
        record["steps_by_channel"] = strip.round(6).tolist()
        fig = plots.heatmap(strip, f"{job.name}: integrated gradients, mean |attribution| per time step\n({where})",
                            xlabel="time step", ylabel="channel")
        artifact = "plots/attributions_steps.png"
    else:
        names, totals = column_totals(values, list(plan.schema.features), plan.schema)
        order = np.argsort(-totals, kind="stable")
        ranked = [{"feature": names[i], "attribution": float(totals[i]), "rank": r + 1} for r, i in enumerate(order)]
        record["features"] = ranked
        fig = plots.importance([{"feature": r["feature"], "importance": r["attribution"], "std": 0.0}
                                for r in ranked[: job.explain.top]],
                               f"{job.name}: integrated gradients\nmean |attribution| on the {where}")
        artifact = "plots/attributions.png"
    run.log_dict(record, "explain/integrated_gradients.json")
    run.log_figure(fig, artifact)
    plots.close(fig)
    return record
