"""Metric functions in numpy, checked against scikit-learn's in the tests.

Classification: accuracy; precision/recall/F1 macro-averaged over the classes that occur (as
scikit-learn does), and for two classes also of the positive class (the second one); AUROC
(binary, or macro one-vs-rest). Regression: MSE, MAE, R².

Federated evaluation pools exactly where sums allow: hospitals send confusion counts and
regression sums, and the server computes the consortium's metrics from their totals.
"""
from __future__ import annotations

import numpy as np

REGRESSION = ("mse", "mae", "r2")


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Rows: true label, columns: predicted label."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def from_confusion(cm: np.ndarray) -> dict[str, float]:
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    seen = (support + predicted) > 0  # classes absent from both sides are left out, as sklearn does
    out = {"accuracy": float(tp.sum() / n) if n else float("nan"),
           "precision_macro": float(precision[seen].mean()) if seen.any() else float("nan"),
           "recall_macro": float(recall[seen].mean()) if seen.any() else float("nan"),
           "f1_macro": float(f1[seen].mean()) if seen.any() else float("nan")}
    if len(cm) == 2:
        out.update({"precision": float(precision[1]), "recall": float(recall[1]), "f1": float(f1[1])})
    return out


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; NaN when one side is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):  # average rank over runs of equal scores
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(y)
    if probs.shape[1] == 2:
        return _binary_auroc(y == 1, probs[:, 1])
    values = [_binary_auroc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def classification(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """`probs`: (rows, classes) class probabilities."""
    k = probs.shape[1]
    if len(y) == 0:
        return {"accuracy": float("nan")}
    out = from_confusion(confusion(y, probs.argmax(1), k))
    out["auroc"] = auroc(y, probs)
    return out


def regression_sums(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n, sum sq err, sum abs err, sum y, sum y²): what pooled MSE/MAE/R² need."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    err = pred - y
    return np.array([len(y), (err**2).sum(), np.abs(err).sum(), y.sum(), (y**2).sum()])


def from_regression_sums(s: np.ndarray) -> dict[str, float]:
    n, sse, sae, sy, syy = (float(v) for v in s)
    if n == 0:
        return {"mse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    total = syy - sy * sy / n
    return {"mse": sse / n, "mae": sae / n, "r2": 1.0 - sse / total if total > 0 else float("nan")}


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return from_regression_sums(regression_sums(y, pred))


def site_mean(results: list[dict[str, float]], skip: tuple[str, ...] = ("num_examples",)) -> dict[str, float]:
    """The plain mean over hospitals of each metric (FLamby's and FLARE's "average over sites":
    each hospital counts once, whatever its rows); NaN (undefined at a hospital) left out. Summed
    exactly (math.fsum), so the order the hospitals answered in cannot change the last bit."""
    import math

    out = {}
    for key in dict.fromkeys(k for r in results for k in r if k not in skip):
        values = [r[key] for r in results if key in r and not np.isnan(r[key])]
        if values:
            out[key] = float(math.fsum(values) / len(values))
    return out
