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
