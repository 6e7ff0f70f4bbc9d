"""Which features the model relies on: permutation importance on held-out rows.

For each feature, its column is shuffled among the held-out rows (`repeats` times, seeded) and the
drop in the task's score is that feature's importance: accuracy for classification, R² for
regression. Model-agnostic and computed by the party that holds the rows (the server's central
split, or the pooled test split), so no hospital row is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import SEQUENCE_MODELS
from orchestrator.core.training import Objective, tensors

TABULAR_MODELS = ("mlp", "logistic")


@dataclass
class Importance:
    features: list[str]
    mean: np.ndarray      # drop in score, per feature
    std: np.ndarray
    score_name: str
    baseline: float
    rows: int

    def ranked(self) -> list[dict]:
        order = np.argsort(-self.mean, kind="stable")
        return [{"feature": self.features[i], "importance": float(self.mean[i]), "std": float(self.std[i]),
                 "rank": r + 1} for r, i in enumerate(order)]


def _score(model: torch.nn.Module, objective: Objective, X: np.ndarray, y: np.ndarray, name: str) -> float:
    with torch.no_grad():
        Xt, yt = tensors(X, y)
        return float(objective.scores(model(Xt), yt)[name])


def permutation_importance(model: torch.nn.Module, objective: Objective, X: np.ndarray, y: np.ndarray,
                           features: list[str], repeats: int, seed: int) -> Importance:
    model.eval()
    name = "r2" if objective.regression else "accuracy"
    base = _score(model, objective, X, y, name)
    rng = np.random.default_rng(seed)
    drops = np.zeros((len(features), repeats))
    for j in range(len(features)):
        for r in range(repeats):
            Xp = X.copy()
            Xp[:, j] = Xp[rng.permutation(len(Xp)), j]
            drops[j, r] = base - _score(model, objective, Xp, y, name)
    return Importance(list(features), drops.mean(1), drops.std(1), name, base, len(y))


def explain_run(run, job: JobSpec, plan, model: torch.nn.Module) -> Importance | None:
    """Log the importance table (JSON + CSV) and a bar chart; None where it does not apply."""
    if not job.explain.enabled or job.model.name not in TABULAR_MODELS or job.model.name in SEQUENCE_MODELS:
        return None
    split = plan.central if job.kind == "federated" else plan.centralized
    if split is None or len(split.y_test) < 2:
        return None
    X, y = split.X_test[: job.explain.max_rows], split.y_test[: job.explain.max_rows]
    objective = Objective.of(job, plan.num_classes, None, model, plan.schema.classes)
    imp = permutation_importance(model, objective, X, y, list(plan.schema.features), job.explain.repeats, job.seed)
    ranked = imp.ranked()
    where = "central held-out split" if job.kind == "federated" else "test split"
    run.log_dict({"method": "permutation", "score": imp.score_name, "baseline": imp.baseline, "rows": imp.rows,
                  "repeats": job.explain.repeats, "evaluated_on": where, "features": ranked},
                 "explain/permutation_importance.json")
    run.log_text("rank,feature,importance,std\n" + "".join(
        f"{r['rank']},{r['feature']},{r['importance']:.6f},{r['std']:.6f}\n" for r in ranked),
        "explain/permutation_importance.csv")
    from orchestrator.tracking import plots

    fig = plots.importance(ranked[: job.explain.top], f"{job.name}: permutation importance\n"
                           f"drop in {imp.score_name} on the {where}, {job.explain.repeats} repeats")
    run.log_figure(fig, "plots/feature_importance.png")
    plots.close(fig)
    run.set_tags({"explain.top_feature": ranked[0]["feature"]})
    return imp
