"""Metric functions in numpy, checked against scikit-learn's in the tests.

Multi-label (several findings per image): subset accuracy, Hamming loss, precision/recall/F1
macro and micro over the findings, AUROC of each finding and their mean.

Classification: accuracy; precision/recall/F1 macro-averaged over the classes that occur (as
scikit-learn does), and for two classes also of the positive class (the second one); AUROC
(binary, or macro one-vs-rest). Regression: MSE, MAE, R².

Federated evaluation pools exactly where sums allow: hospitals send confusion counts and
regression sums, and the server computes the consortium's metrics from their totals.
"""
from __future__ import annotations

import math

import numpy as np

REGRESSION = ("mse", "mae", "r2")


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Rows: true label, columns: predicted label."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def from_confusion(cm: np.ndarray) -> dict[str, float]:
    return from_confusions(np.asarray(cm)[None])[0]


def from_confusions(cms: np.ndarray) -> list[dict[str, float]]:
    """`from_confusion` of each of K confusion matrices (K, k, k), computed together."""
    cm = np.asarray(cms, dtype=np.float64)
    tp, support, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(2), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        prf = np.stack([precision, recall, f1])
        seen = (support + predicted) > 0  # classes absent from both sides are left out, as sklearn does
        columns = [tp.sum(1) / support.sum(1), *((prf * seen).sum(2) / seen.sum(1))]   # 0/0: NaN
    names = ["accuracy", "precision_macro", "recall_macro", "f1_macro"]
    if cm.shape[1] == 2:
        names += ["precision", "recall", "f1"]
        columns += list(prf[:, :, 1])
    return [dict(zip(names, row)) for row in np.array(columns).T.tolist()]


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; NaN when one side is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    first = np.empty(len(s), dtype=bool)   # where each run of equal scores begins
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    sizes = np.diff(starts, append=len(s))
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat(starts + (sizes + 1) / 2.0, sizes)   # a run's average rank (1-based)
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


# ----------------------------------------------------------------------- multi-label (several findings per image)
def metric_label(label: str) -> str:
    """A finding's name as it may end a metric key (auroc_Pleural_Effusion)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-.]", "_", str(label)) or "label"


def multilabel_sums(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n, rows with every finding right, true positives per finding, false positives per finding,
    false negatives per finding): what pooled subset accuracy, Hamming loss, precision, recall and F1
    need. `y`, `pred`: (rows, findings) of 0/1."""
    y, pred = np.asarray(y) > 0.5, np.asarray(pred) > 0.5
    exact = int((y == pred).all(1).sum()) if len(y) else 0
    return np.concatenate([[len(y), exact], (y & pred).sum(0), (~y & pred).sum(0), (y & ~pred).sum(0)]
                          ).astype(np.float64)


def from_multilabel_sums(s: np.ndarray) -> dict[str, float]:
    """accuracy (subset accuracy, as scikit-learn's accuracy_score), hamming_loss, precision/recall/F1
    macro over the findings (a finding absent from both sides left out, as scikit-learn's
    zero_division does not) and micro (every finding's counts pooled)."""
    s = np.asarray(s, dtype=np.float64)
    n, exact = s[0], s[1]
    tp, fp, fn = np.split(s[2:], 3)
    if n == 0:
        return {"accuracy": float("nan")}
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    seen = (tp + fp + fn) > 0
    out = {"accuracy": float(exact / n), "hamming_loss": float((fp + fn).sum() / (n * len(tp)))}
    for name, v in (("precision_macro", precision), ("recall_macro", recall), ("f1_macro", f1)):
        out[name] = float(v[seen].mean()) if seen.any() else float("nan")
    P, R = tp.sum() / max(tp.sum() + fp.sum(), 1e-300), tp.sum() / max(tp.sum() + fn.sum(), 1e-300)
    out["f1_micro"] = float(2 * P * R / (P + R)) if P + R > 0 else 0.0
    return out


def multilabel(y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...] = ()) -> dict[str, float]:
    """Every multi-label metric: the pooled ones of `from_multilabel_sums`, AUROC of each finding
    (`auroc_<finding>`, NaN where its test rows hold one side only) and their mean (`auroc`)."""
    y, probs = np.asarray(y), np.asarray(probs)
    if len(y) == 0:
        return {"accuracy": float("nan")}
    out = from_multilabel_sums(multilabel_sums(y, probs >= 0.5))
    names = [metric_label(lab) for lab in labels] if len(labels) == probs.shape[1] else \
        [str(j) for j in range(probs.shape[1])]
    each = [_binary_auroc(y[:, j] > 0.5, probs[:, j]) for j in range(probs.shape[1])]
    seen = [v for v in each if not np.isnan(v)]
    out["auroc"] = float(np.mean(seen)) if seen else float("nan")
    out.update({f"auroc_{name}": v for name, v in zip(names, each)})
    return out


# ----------------------------------------------------------------------- segmentation (a label per pixel)
def segmentation_sums(y: np.ndarray, pred: np.ndarray, k: int, hd95: np.ndarray | None = None) -> np.ndarray:
    """What pooled Dice, IoU and pixel accuracy need, summed over cases: (n, per class: Dice summed
    over the cases whose truth holds it, those cases, IoU summed, true positives, false positives,
    false negatives (pixels), HD95 summed, its cases). `y`, `pred`: (cases, pixels) class indices;
    `hd95`: (cases, classes) distances (NaN where undefined) or None. Class 0 is the background.
    A case whose truth lacks a class counts for none of its per-case means (MONAI's ignore_empty)."""
    y, pred = np.asarray(y).reshape(len(y), -1), np.asarray(pred).reshape(len(pred), -1)
    n = len(y)
    out = np.zeros(1 + 8 * k, dtype=np.float64)
    out[0] = n
    if n == 0:
        return out
    dice_sum, dice_n, iou_sum, tp, fp, fn, hd_sum, hd_n = (out[1 + j * k: 1 + (j + 1) * k] for j in range(8))
    for c in range(k):
        t, p = y == c, pred == c
        inter, st, sp = (t & p).sum(1), t.sum(1), p.sum(1)
        present = st > 0
        dice_sum[c] = float((2.0 * inter[present] / (st[present] + sp[present])).sum())
        iou_sum[c] = float((inter[present] / (st[present] + sp[present] - inter[present])).sum())
        dice_n[c] = float(present.sum())
        tp[c], fp[c], fn[c] = inter.sum(), (sp - inter).sum(), (st - inter).sum()
        if hd95 is not None:
            d = np.asarray(hd95, dtype=np.float64)[:, c]
            ok = present & np.isfinite(d)
            hd_sum[c], hd_n[c] = float(d[ok].sum()), float(ok.sum())
    return out


def from_segmentation_sums(s: np.ndarray, labels: tuple[str, ...] = (), hd95: bool | None = None) -> dict[str, float]:
    """dice and iou (the mean over the labelled structures of each one's mean per-case score),
    dice_<label> and iou_<label> of each, hd95 (millimetres, where the job fixes the spacing) and
    pixel_accuracy. The background (class 0) is scored in none of the means. `hd95`: whether the
    HD95 keys are wanted (every hospital then sends the same keys, NaN where undefined); None: where
    any distance was summed."""
    s = np.asarray(s, dtype=np.float64)
    k = (len(s) - 1) // 8
    if s[0] == 0:
        return {"dice": float("nan")}
    dice_sum, dice_n, iou_sum, tp, fp, fn, hd_sum, hd_n = (s[1 + j * k: 1 + (j + 1) * k] for j in range(8))
    names = [metric_label(lab) for lab in labels] if len(labels) == k else [str(c) for c in range(k)]
    out: dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        dice, iou, hd = dice_sum / dice_n, iou_sum / dice_n, hd_sum / hd_n
    for name, metric in (("dice", dice), ("iou", iou)):
        fg = metric[1:][~np.isnan(metric[1:])]
        out[name] = float(fg.mean()) if len(fg) else float("nan")
    with_hd = bool(hd_n[1:].sum() > 0) if hd95 is None else hd95
    if with_hd:
        fg = hd[1:][~np.isnan(hd[1:])]
        out["hd95"] = float(fg.mean()) if len(fg) else float("nan")
    out["pixel_accuracy"] = float(tp.sum() / max((tp + fn).sum(), 1.0))
    for c in range(1, k):
        out[f"dice_{names[c]}"], out[f"iou_{names[c]}"] = float(dice[c]), float(iou[c])
        if with_hd:
            out[f"hd95_{names[c]}"] = float(hd[c])
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


def from_sums(total: np.ndarray, task: str, labels: tuple[str, ...] = ()) -> dict[str, float]:
    """The metrics pooled exactly from hospitals' summed counts: confusion counts (classification),
    regression sums, multi-label sums or segmentation sums (`labels`: the masks' label names)."""
    if task == "segmentation":
        return from_segmentation_sums(total, labels)
    if task == "regression":
        return from_regression_sums(total)
    if task == "multilabel":
        return from_multilabel_sums(total)
    return from_confusion(total)


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


# The metrics a person looks at first, in order: what the summary leads with, what progress shows.
HEADLINE_CLASSIFICATION = ("accuracy", "f1", "auroc")
HEADLINE_REGRESSION = ("mse", "r2")
HEADLINE_SEGMENTATION = ("dice", "iou", "hd95")
HEADLINE_SCOPES = ("central", "eval", "site_mean", "val", "personal", "personal_site_mean")


def headline(metrics: dict[str, float], limit: int | None = None) -> list[str]:
    """The headline keys present in `metrics`: accuracy/F1/AUROC (or MSE/R²) on the server's held-out
    rows (`central/`), then over the hospitals' or the test rows (`eval/`), then validation."""
    names = HEADLINE_CLASSIFICATION if any(k.endswith("/accuracy") for k in metrics) else \
        HEADLINE_SEGMENTATION if any(k.endswith("/dice") for k in metrics) else HEADLINE_REGRESSION
    keys = [f"{scope}/{name}" for scope in HEADLINE_SCOPES for name in names if f"{scope}/{name}" in metrics]
    keys = [k for k in keys if not (isinstance(metrics[k], float) and math.isnan(metrics[k]))]
    return keys[:limit] if limit else keys
