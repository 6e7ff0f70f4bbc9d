"""Figures for a run and for comparisons: matplotlib on the Agg backend, no display needed."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

Series = dict[str, list[tuple[int, float]]]  # label -> [(step, value)]


def curves(series: Series, title: str, xlabel: str, ylabel: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, points in sorted(series.items()):
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    return fig


def partition(names: list[str], label_counts: np.ndarray, classes: list[str], most: int = 60) -> Figure:
    """Stacked bars: rows per hospital, split by label (the first `most` hospitals; the table has all)."""
    title = "Training rows per hospital, by label"
    if len(names) > most:
        title += f"\n(first {most} of {len(names)} hospitals; all in partition/hospitals.json)"
        names, label_counts = names[:most], label_counts[:most]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 4), dpi=110)
    bottom = np.zeros(len(names))
    for k, cls in enumerate(classes):
        ax.bar(names, label_counts[:, k], bottom=bottom, label=str(cls))
        bottom += label_counts[:, k]
    ax.set(title=title, xlabel="hospital", ylabel="rows")
    ax.legend(fontsize=7, title="label")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, classes: list[str], title: str) -> Figure:
    side = max(4.0, 1.5 + 0.5 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=8, wrap=True)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return fig


def importance(ranked: list[dict], title: str) -> Figure:
    """Horizontal bars, most important feature on top, with the spread over repeats."""
    rows = list(reversed(ranked))
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(rows) + 1.2)), dpi=110)
    ax.barh([r["feature"] for r in rows], [r["importance"] for r in rows], xerr=[r["std"] for r in rows],
            color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("importance")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def heatmap(values: np.ndarray, title: str, xlabel: str = "", ylabel: str = "") -> Figure:
    """A matrix of non-negative values (an image's pixels, a sequence's channels x steps), with a scale."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(min(10, max(4, 0.35 * cols + 2)), min(8, max(2.2, 0.35 * rows + 1.6))), dpi=110)
    shown = ax.imshow(values, cmap="magma", aspect="auto" if rows * 3 < cols else "equal")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="mean |attribution|")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if xlabel:   # a sequence: whole steps and channels
        ax.set_xticks(range(0, cols, max(1, cols // 10)))
        ax.set_yticks(range(rows))
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def overlays(images: list[np.ndarray], maps: list[np.ndarray], titles: list[str], title: str) -> Figure:
    """Images in grey, each with its attribution map over it (transparent where it is small)."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), dpi=110, squeeze=False)
    for ax, image, amap, sub in zip(axes[0], images, maps, titles):
        ax.imshow(image, cmap="gray")
        top = float(amap.max()) or 1.0
        ax.imshow(amap / top, cmap="magma", alpha=np.clip(amap / top, 0.0, 1.0) * 0.75)
        ax.set_title(sub, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def segmentations(images: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray], labels: list[str],
                  titles: list[str], title: str) -> Figure:
    """Each image in grey three times: alone, with its true mask over it, with the predicted one; a
    legend names each label's colour (the background, label 0, is left clear)."""
    from matplotlib.patches import Patch

    n, k = len(images), len(labels)
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(3, n, figsize=(2.0 * n, 6.3), dpi=110, squeeze=False)
    for j, (image, truth, pred, sub) in enumerate(zip(images, truths, preds, titles)):
        for i, (mask, row) in enumerate(((None, "image"), (truth, "truth"), (pred, "prediction"))):
            ax = axes[i][j]
            ax.imshow(image, cmap="gray")
            if mask is not None:
                shown = np.ma.masked_where(mask == 0, mask)
                ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, alpha=0.55, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row, fontsize=8)
        axes[0][j].set_title(sub, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.legend(handles=[Patch(color=colours(c % 10), alpha=0.55, label=labels[c]) for c in range(1, k)],
               loc="lower center", ncol=min(k - 1, 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def log_segmentation_overlays(run, job, plan, model, count: int = 6) -> None:
    """A few held-out images (the server's split, or the pooled test split) with their true and
    predicted masks (the middle axial slice of a volume): plots/segmentation_overlays.png. A
    federation whose images all stay with the hospitals has none to draw."""
    import torch

    from orchestrator.core.training import Objective, forward, tensors

    split = plan.central if job.kind == "federated" else plan.centralized
    if split is None or len(split.y_test) == 0:
        return
    k = min(count, len(split.y_test))
    X, y = tensors(np.asarray(split.X_test[:k]), np.asarray(split.y_test[:k]))
    model.eval()
    with torch.no_grad():
        out = forward(model, X)
    objective = Objective.of(job, plan.num_classes, None, model, plan.schema.classes)
    dims, side = job.model.spatial_dims, int(out.shape[-1])
    channels = int(X.shape[1]) // side**dims
    pred = objective.predict(out).reshape(k, *(side,) * dims)
    truth = y.numpy().reshape(k, *(side,) * dims)
    images = X.numpy().reshape(k, channels, *(side,) * dims).mean(1)
    if dims == 3:
        images, truth, pred = images[:, side // 2], truth[:, side // 2], pred[:, side // 2]
    titles = []
    for t, p in zip(truth, pred):
        fg = [c for c in range(1, plan.num_classes) if (t == c).any()]
        dice = [2 * ((t == c) & (p == c)).sum() / max((t == c).sum() + (p == c).sum(), 1) for c in fg]
        titles.append(f"Dice {np.mean(dice):.2f}" if dice else "no structure")
    where = "central held-out split" if job.kind == "federated" else "test split"
    fig = segmentations(list(images), list(truth), list(pred), list(plan.schema.classes), titles,
                        f"{job.name}: segmentations on the {where}")
    run.log_figure(fig, "plots/segmentation_overlays.png")
    close(fig)


def close(fig: Figure) -> None:
    plt.close(fig)


def site_matrix(values: np.ndarray, sites: list[str], models: list[str], metric: str, title: str) -> Figure:
    """Cross-site validation: one row per hospital, one column per model, each cell annotated."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(min(14, max(4, 1.1 * cols + 2.5)), min(10, max(2.5, 0.45 * rows + 1.8))), dpi=110)
    shown = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=metric)
    ax.set_xticks(range(cols), models, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(rows), sites, fontsize=8)
    ax.set(xlabel="model", ylabel="evaluated at hospital (its own test rows)")
    if rows * cols <= 400:
        finite = values[np.isfinite(values)]
        middle = float(finite.mean()) if finite.size else 0.0
        for i in range(rows):
            for j in range(cols):
                v = values[i, j]
                ax.text(j, i, "-" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="black" if v > middle else "white")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
