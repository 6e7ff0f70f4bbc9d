"""`consortium init NAME [--data DIR_OR_CSV] [--target COL]`: a starting job YAML for the user's data.

A directory holding one CSV per hospital becomes natural silos (one hospital per file); a single CSV
is split among simulated hospitals; no data: the bundled breast-cancer demo. The target column is
the one named, else guessed from its name (target, label, outcome, ...); a numeric target with many
distinct values makes a regression. The file is validated (data opened and split) before it is kept.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.spec.errors import DataError, UserError

TARGET_NAMES = ("target", "label", "outcome", "class", "diagnosis", "y", "num", "disease", "status")


def _header(csv: Path):
    import pandas as pd

    try:
        return pd.read_csv(csv, nrows=500)
    except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
        raise DataError(str(csv), [f"not a readable CSV: {str(exc).splitlines()[0][:200]}"]) from None


def guess_target(columns: list[str], source: str) -> str:
    lowered = {c.lower().strip(): c for c in columns}
    for name in TARGET_NAMES:
        if name in lowered:
            return lowered[name]
    raise UserError("--target", [f"no column of {source} looks like the label ({', '.join(TARGET_NAMES)}): "
                                 f"name it with --target, one of {columns[:40]}"])


def not_features(csvs: list[Path], target: str) -> list[str]:
    """Columns of any file that look like identifiers or dates (what `run` would refuse)."""
    from orchestrator.core.columns import kind_of

    found: list[str] = []
    for csv in csvs:
        frame = _header(csv)
        for col in frame.columns:
            if col != target and col not in found and kind_of(frame[col], str(col))[0] in ("identifier", "date"):
                found.append(str(col))
    return found


def starter(name: str, data: Path | None, target: str | None) -> tuple[str, str]:
    """(YAML text, one line describing it)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError("NAME", [f"{name!r}: letters, digits, '-' and '_' only (it names the job and its file)"])
    if data is None:
        source, frame, csvs = "breast_cancer", None, []
    else:
        if not data.exists():
            raise DataError(str(data), ["no such file or directory: expected a CSV, or a directory with one CSV "
                                        "per hospital"])
        if data.is_dir() and _holds_images(data):
            from orchestrator.jobs.image_starter import image_starter

            return image_starter(name, data)
        csvs = sorted(data.glob("*.csv")) if data.is_dir() else [data]
        if not csvs:
            raise DataError(str(data), ["holds no .csv file and no image: one CSV per hospital, or image files "
                                        "(.png .jpg .tif .dcm .nii .nii.gz), are expected"])
        source, frame = "csv", _header(csvs[0])
    if frame is not None:
        target = target or guess_target(list(frame.columns), str(csvs[0]))
        for csv in csvs:
            cols = list(_header(csv).columns)
            if target not in cols:
                raise DataError(str(csv), [f"has no column '{target}' (columns: {cols[:40]}): name the label with --target"])
        y = frame[target].dropna()
        regression = y.dtype.kind == "f" and y.nunique() > 20
        drop = not_features(csvs, target)
    else:
        regression, drop = False, []
    silos = len(csvs) > 1
    lines = [f"# consortium run {name}.yaml",
             "# yaml-language-server: $schema=consortium.schema.json",
             f"# Made by `consortium init`: edit freely; `consortium validate {name}.yaml` checks it.",
             f"name: {name}", "kind: federated", "seed: 42", "data:"]
    if source == "csv":
        lines += ["  source: csv", f"  path: {data}", f"  target: {target}", "  test_fraction: 0.25"]
        if drop:
            lines.append(f"  drop: [{', '.join(drop)}]   # identifiers and dates are not features")
    else:
        lines += ["  source: breast_cancer", "  test_fraction: 0.2"]
    head = "linear" if regression else "softmax"
    lines += [f"model: {{name: mlp, hidden: [32], dropout: 0.1, head: {head}}}",
              "train:", f"  loss: {'mse' if regression else 'cross_entropy'}",
              "  optimizer: {name: adam, lr: 0.01}", "  batch_size: 32", "  epochs: 2",
              "federated:"]
    if silos:
        lines += ["  num_clients: null        # one hospital per CSV file", "  rounds: 10",
                  "  partition: {name: natural}"]
    elif regression:  # label skew is for classes: a regression's rows are shared at random
        lines += ["  num_clients: 5           # simulated hospitals sharing the rows", "  rounds: 10",
                  "  partition: {name: iid}"]
    else:
        lines += ["  num_clients: 5           # simulated hospitals sharing the rows", "  rounds: 10",
                  "  partition: {name: dirichlet, alpha: 1.0}"]
    lines += ["  strategy: {name: fedavg}", "tracking:", f"  experiment: {name}", f"  register_model: {name}"]
    what = (f"{len(csvs)} hospitals, one per CSV in {data}" if silos else
            f"5 simulated hospitals sharing {csvs[0]}" if csvs else "5 simulated hospitals on the breast-cancer demo")
    kind = "regression" if regression else "classification"
    return "\n".join(lines) + "\n", f"{what}; {kind} of '{target or 'target'}'"


def _holds_images(folder: Path, look: int = 2000) -> bool:
    from orchestrator.core.imaging.readers import is_image

    for i, p in enumerate(folder.rglob("*")):
        if i >= look:
            break
        if p.is_file() and p.suffix.lower() != ".csv" and is_image(p):
            return True
    # hospitals' folders holding only a manifest, its images kept elsewhere (paths relative to it)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir())[:5]:
        manifests = sorted(sub.glob("*.csv"))
        if len(manifests) == 1:
            import csv

            with open(manifests[0], newline="") as f:
                rows = [r for _, r in zip(range(6), csv.reader(f))][1:]
            if any(is_image(Path(cell.strip())) for row in rows for cell in row):
                return True
    return False


def write_starter(name: str, data: Path | None, target: str | None, directory: Path, force: bool) -> tuple[Path, str]:
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_raw
    from orchestrator.spec.reference import schema

    path = directory / f"{name}.yaml"
    if path.exists() and not force:
        raise UserError(str(path), ["exists already: pick another NAME, or --force to replace it"])
    text, what = starter(name, data.resolve() if data is not None else None, target)
    import yaml

    plan = plan_data(load_raw(yaml.safe_load(text), str(path)))  # it must validate, data included, first
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    schema_file = directory / "consortium.schema.json"
    if not schema_file.exists():
        schema_file.write_text(schema())
    return path, f"{what}; rows per hospital: {', '.join(map(str, plan.hospital_sizes))}"
