"""Hospitals seen from this process, for what needs no federation: `kind: local` (each hospital
trains alone) and `consortium crossval` (a model scored at every hospital). Each hospital's share
comes from `clients.hospitals` exactly as in a simulation, is imputed from its own training rows,
and is scored the way its evaluate handler scores the global model, so the numbers line up with
a federated run's `hospital_<name>/eval/...`.
"""
from __future__ import annotations

import numpy as np
import torch

from clients.handlers import Hospital
from orchestrator.core import metrics as M
from orchestrator.core.models import standardizer
from orchestrator.core.training import Objective, forward, pooled_sums, scored

# what a site's scores hold besides metrics
ROWS = "num_examples"


def load_hospitals(job, plan) -> list[Hospital]:
    from clients.hospitals import hospital_share

    n = len(plan.hospitals)
    found = []
    for pid in plan.pids():
        name, split = hospital_share(job, plan.schema, pid, n)
        found.append(Hospital(job, plan.schema, pid, name, split))
    return found


@torch.no_grad()
def score(h: Hospital, model: torch.nn.Module, objective: Objective) -> tuple[dict[str, float], np.ndarray]:
    """`model` on `h`'s own test rows: (metrics with num_examples, the sums that pool exactly:
    confusion counts, or regression sums). Imputed as the hospital imputes: from its own training
    rows, the model's input mean where it never observed a column (so any model can be scored)."""
    from orchestrator.core.splits import column_fill, fill
    from orchestrator.core.training import tensors

    values = column_fill(h.raw.X_train, h.job.data.impute, fallback=standardizer(model).mean.detach().cpu().numpy())
    X, y = tensors(fill(h.raw.X_test, values), h.raw.y_test)
    was = model.training
    model.eval()
    out = forward(model, X) if len(y) else None
    if was:
        model.train()
    return scored(out, y, objective), pooled_sums(out, y, len(h.schema.classes), objective)


def pooled(results: list[tuple[dict[str, float], np.ndarray]], task: str, labels: tuple[str, ...] = ()
           ) -> dict[str, float]:
    """The consortium's metrics from every hospital's: exact from the sums (as a federated round
    pools them), the loss and AUROC (each finding's too) row-weighted."""
    if not results:
        return {}
    total = np.sum([s for _, s in results], axis=0)
    out = M.from_sums(total, task, labels)
    rows = [r.get(ROWS, 0) for r, _ in results]
    for key in ["loss", *dict.fromkeys(k for r, _ in results for k in r if k.startswith("auroc"))]:
        pairs = [(r[key], n) for r, n in zip((r for r, _ in results), rows)
                 if key in r and not np.isnan(r[key]) and n > 0]
        if pairs:
            out[key] = float(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
    return out

