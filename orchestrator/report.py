"""The figures and tables every run leaves in MLflow: curves, the partition, the confusion matrix."""
from __future__ import annotations

import numpy as np

from orchestrator.config import JobSpec
from orchestrator.plan import DataPlan


def _confusion(job: JobSpec, plan: DataPlan, outcome) -> tuple[np.ndarray | None, str]:
    if getattr(outcome, "confusion", None) is not None:
        return outcome.confusion, "hospitals' test rows (federated evaluation, last round)"
    split = plan.central if job.kind == "federated" else plan.centralized
    if split is None:
        return None, ""
    from orchestrator.training import confusion_counts, tensors

    where = "central held-out split" if job.kind == "federated" else "test split"
    return confusion_counts(outcome.model, *tensors(split.X_test, split.y_test), plan.num_classes), where


def log_report(run, job: JobSpec, plan: DataPlan, outcome) -> None:
    from orchestrator import plots

    keys = run.metric_keys()
    step = "round" if job.kind == "federated" else "epoch"
    figures = []
    for name, wanted, ylabel in [("loss", ("train/loss", "eval/loss", "central/loss"), "loss"),
                                 ("accuracy", ("eval/accuracy", "central/accuracy"), "accuracy")]:
        present = [k for k in wanted if k in keys]
        if present:
            figures.append((plots.curves(run.history(present), f"{job.name}: {name}", step, ylabel),
                            f"plots/{name}.png"))
    per_hospital = [k for k in keys if k.startswith("hospital_") and k.endswith("/eval/accuracy")]
    if per_hospital:
        series = {k.split("/")[0].removeprefix("hospital_"): v for k, v in run.history(per_hospital).items()}
        figures.append((plots.curves(series, f"{job.name}: accuracy per hospital", step, "accuracy"),
                        "plots/hospitals_accuracy.png"))
    labels = getattr(outcome, "label_counts", None)
    if labels is not None and plan.hospitals:
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
