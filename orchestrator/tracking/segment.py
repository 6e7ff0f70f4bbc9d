"""`consortium predict MODEL DIR_OR_MANIFEST` for a segmentation model: one mask per case, in its
image's format and on its image's grid (`core.imaging.writers`), and a CSV with each case's pixels
per label and, where the truth is given (the manifest's mask column, or the training's
data.mask_pattern), its Dice per label on the image's own grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.spec.errors import DataError, UserError


def cases(where: Path, card: dict) -> tuple[list[Path], list[Path | None]]:
    """The images under `where` (a folder, or a manifest CSV) and each one's true mask, if given."""
    from orchestrator.core.imaging.folders import list_masked
    from orchestrator.core.imaging.masks import find_mask
    from orchestrator.core.imaging.readers import is_image
    from orchestrator.spec.data import DataSpec

    folder = where if where.is_dir() else where.parent
    pattern = card.get("mask_pattern")
    spec = DataSpec.model_validate({"source": "images", "path": str(folder), "mask_pattern": pattern,
                                    "manifest": None if where.is_dir() else where.name})
    manifest = where.is_file() or any(p.suffix.lower() == ".csv" for p in folder.iterdir())
    try:
        if manifest:
            samples = list_masked(folder, spec)
            found: list[Path | None] = list(samples.masks) if samples.masks else [None for _ in samples.paths]
            return samples.paths, found
    except DataError:
        if where.is_file():
            import pandas as pd

            from orchestrator.core.imaging.folders import PATH_NAMES

            df = pd.read_csv(where, dtype=str)
            col = next((c for c in df.columns if c.lower().strip() in PATH_NAMES), df.columns[0])
            paths = [(where.parent / str(v)).resolve() for v in df[col].dropna()]
            return paths, [None for _ in paths]
    files = sorted(p.resolve() for p in folder.rglob("*") if p.is_file() and is_image(p)
                   and "_pred." not in p.name)
    masks = {find_mask(p, pattern) for p in files} if pattern else set()
    images = [p for p in files if p not in masks]
    truth: list[Path | None] = [m if (m := find_mask(p, pattern)).is_file() else None for p in images] \
        if pattern else [None for _ in images]
    return images, truth


def predict_masks(model, card: dict, where: Path, out: Path | None) -> tuple[Path, int]:
    import pandas as pd

    from orchestrator.core.imaging.masks import BadMask, image_grid, image_spacing
    from orchestrator.core.imaging.readers import UnreadableImage, read_image
    from orchestrator.core.imaging.writers import mask_path, to_file_grid, write_mask
    from orchestrator.tracking.flavor import preprocess

    pre = preprocess(card)
    images, truths = cases(where, card)
    if not images:
        raise UserError(str(where), ["no image files (.png .jpg .tif .dcm .nii .nii.gz) found"])
    folder = where if where.is_dir() else where.parent
    out_csv = out or (folder / "predictions.csv" if where.is_dir() else where.with_name(where.stem + ".predictions.csv"))
    mask_dir = out_csv.parent / f"{out_csv.stem}_masks" if out is not None else None
    classes = list(card["classes"])
    values = np.asarray(card.get("values") or range(len(classes)), dtype=np.int64)
    rows, bad = [], []
    for start in range(0, len(images), 16):
        batch = images[start:start + 16]
        pixels = []
        for p in batch:
            try:
                pixels.append(read_image(p, pre))
            except UnreadableImage as exc:
                bad.append(f"{p}: {exc}")
        if bad:
            break
        answers = model.predict(np.stack(pixels).astype(np.float32))
        for p, truth, grid_mask in zip(batch, truths[start:start + 16], answers["mask"]):
            grid = image_grid(p, pre.dims)
            labels = np.asarray(grid_mask, dtype=np.int64)
            spacing = image_spacing(p) if pre.spacing is not None else None
            if truth is not None:
                try:
                    true_labels = _raw_truth(truth, pre.dims)
                except (BadMask, UnreadableImage) as exc:
                    bad.append(f"{truth}: {exc}")
                    continue
            on_file = to_file_grid(labels, grid, pre, spacing) if grid is not None else labels
            written = write_mask(on_file, p, mask_path(p, mask_dir), pre.dims)
            row: dict[str, object] = {"path": str(p), "mask": str(written)}
            row.update({f"pixels_{c}": int((on_file == v).sum()) for c, v in zip(classes, values)})
            if truth is not None:
                row["truth"] = str(truth)
                if true_labels.shape != on_file.shape:
                    bad.append(f"{truth}: mask of shape {true_labels.shape}, but its image is {on_file.shape}")
                    continue
                dice = [_dice(true_labels == v, on_file == v) for v in values[1:]]
                row.update({f"dice_{c}": d for c, d in zip(classes[1:], dice)})
                seen = [d for d in dice if not np.isnan(d)]
                row["dice"] = float(np.mean(seen)) if seen else float("nan")
            rows.append(row)
    if bad:
        raise UserError(str(where), bad[:8] + ([f"... and {len(bad) - 8} more"] if len(bad) > 8 else []))
    pd.DataFrame(rows).to_csv(out_csv, index=False)
    return out_csv, len(rows)


def _raw_truth(path: Path, dims: int) -> np.ndarray:
    """A true mask as its file holds it (the reader's orientation, its own grid)."""
    from orchestrator.core.imaging.masks import _decode
    from orchestrator.core.imaging.readers import _decoded, kind_of

    kind = kind_of(path)
    return _decoded(kind, lambda: _decode(path, kind, dims))[0]


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """A case's Dice of one label; NaN where its truth lacks the label (as the runs score it)."""
    t = int(truth.sum())
    if t == 0:
        return float("nan")
    return float(2.0 * (truth & pred).sum() / (t + int(pred.sum())))
