"""The figures and tables every run leaves in MLflow: curves, the partition, the confusion matrix."""
from __future__ import annotations

import numpy as np

from orchestrator.spec.job import JobSpec
from orchestrator.core.dataplan import DataPlan


def _confusion(job: JobSpec, plan: DataPlan, outcome) -> tuple[np.ndarray | None, str]:
    if plan.task != "classification":   # a multi-label run: each finding's AUROC and F1 are its metrics
        return None, ""
    if getattr(outcome, "confusion", None) is not None:
        return outcome.confusion, "hospitals' test rows (federated evaluation, last round)"
    split = plan.central if job.kind == "federated" else plan.centralized
    if split is None:
        return None, ""
    from orchestrator.core.training import Objective, confusion_counts, tensors

    where = "central held-out split" if job.kind == "federated" else "test split"
    objective = Objective.of(job, plan.num_classes, None, outcome.model, plan.schema.classes)
    return confusion_counts(outcome.model, *tensors(split.X_test, split.y_test), plan.num_classes, objective), where


def log_report(run, job: JobSpec, plan: DataPlan, outcome) -> None:
    from orchestrator.tracking import plots

    keys = run.metric_keys()
    step = "round" if job.kind == "federated" else "epoch"
    figures = []
    for name, wanted, ylabel in [("loss", ("train/loss", "val/loss", "eval/loss", "central/loss"), "loss"),
                                 ("accuracy", ("val/accuracy", "eval/accuracy", "central/accuracy"), "accuracy"),
                                 ("f1", ("val/f1_macro", "eval/f1_macro", "central/f1_macro"), "macro F1"),
                                 ("dice", ("val/dice", "eval/dice", "central/dice"), "mean Dice"),
                                 ("r2", ("val/r2", "eval/r2", "central/r2"), "R²"),
                                 ("mae", ("val/mae", "eval/mae", "central/mae"), "mean absolute error")]:
        present = [k for k in wanted if k in keys]
        if present:
            figures.append((plots.curves(run.history(present), f"{job.name}: {name}", step, ylabel),
                            f"plots/{name}.png"))
    score = "r2" if plan.regression else "accuracy"
    per_hospital = [k for k in keys if k.startswith("hospital_") and k.endswith(f"/eval/{score}")]
    if per_hospital:
        series = {k.split("/")[0].removeprefix("hospital_"): v for k, v in run.history(per_hospital).items()}
        figures.append((plots.curves(series, f"{job.name}: {score} per hospital", step, score),
                        f"plots/hospitals_{score}.png"))
    labels = getattr(outcome, "label_counts", None)
    if labels is not None and plan.hospitals and not plan.regression:
        classes = list(plan.schema.classes)
        figures.append((plots.partition(plan.hospitals, labels, classes), "plots/partition.png"))
        run.log_dict({"hospitals": [{"hospital": h, "rows": int(n), "train_rows_by_label": dict(zip(classes, map(int, c)))}
                                    for h, n, c in zip(plan.hospitals, plan.hospital_sizes, labels)]},
                     "partition/hospitals.json")
    matrix, where = _confusion(job, plan, outcome)
    if matrix is not None:
        classes = list(plan.schema.classes)
        figures.append((plots.confusion(matrix, classes, f"Confusion matrix\n{where}"), "plots/confusion_matrix.png"))
        run.log_dict({"classes": classes, "rows_true_columns_predicted": matrix.tolist(), "evaluated_on": where},
                      "metrics/confusion_matrix.json")
    for fig, path in figures:
        run.log_figure(fig, path)
        plots.close(fig)
