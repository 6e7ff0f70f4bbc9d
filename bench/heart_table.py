"""The heart-disease table: pooled, local-only, federated strategies and personalized models on the
four real hospitals we ship (Cleveland, Hungary, Switzerland, Long Beach VA), on one split, one
model and one budget (15 rounds x 2 local epochs = 30 epochs), over several seeds.

Each method's per-hospital accuracy is on that hospital's own test rows: the federated global
model's `hospital_<name>/eval/accuracy`, the personal models' `hospital_<name>/personal/accuracy`,
local-only's own models, and the pooled model scored at each hospital by `consortium crossval`.
The mean over hospitals counts each once (FLamby's figure).

    .venv/bin/python bench/heart_table.py --seeds 42 43 44 45 46 47 48 49 50 51
    .venv/bin/python bench/heart_table.py --ceiling     # how far any model gets above each hospital's majority class

`--ceiling` answers a different question, outside the federated protocol: at each hospital, what
accuracy do standard classifiers (scikit-learn's logistic regression, random forest and gradient
boosting, imputed and scaled) reach on its rows, trained on that hospital's rows alone or on them
plus every other hospital's (a pooled upper bound), scored by repeated stratified 10-fold
cross-validation (8-fold at Switzerland, which has 8 negative rows), at the 0.5 threshold and at
the best threshold chosen on the scores themselves (optimistic on purpose)? Beside it, the share
of the hospital's majority class.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SITES = ["cleveland", "hungarian", "switzerland", "va"]
SGD = ["train.optimizer.name=sgd", "train.optimizer.lr=0.05"]
PERSONAL = ["federated.crossval=false", "federated.personalize.share_models=false"]
METHODS = {   # name: (config, overrides, where the per-hospital accuracy is)
    "pooled (centralized)": ("heart_disease_sites.yaml", ["kind=centralized", "train.epochs=30"], "crossval"),
    "local only": ("heart_local.yaml", ["federated.crossval=false"], "eval"),
    "FedAvg": ("heart_disease_sites.yaml", [], "eval"),
    "FedProx (mu 0.01)": ("heart_disease_sites.yaml", ["federated.strategy.name=fedprox"], "eval"),
    "FedAdam (server lr 0.01)": ("heart_disease_sites.yaml", ["federated.strategy.name=fedadam",
                                                              "federated.strategy.server_lr=0.01"], "eval"),
    "SCAFFOLD (SGD 0.05)": ("heart_disease_sites.yaml", ["federated.strategy.name=scaffold", *SGD], "eval"),
    "FedAvg (SGD 0.05)": ("heart_disease_sites.yaml", SGD, "eval"),
    "FedAvg + finetune 5 epochs": ("heart_personalized.yaml", ["federated.crossval=false",
                                                               "federated.personalize.share_models=false"],
                                   "personal"),
    "FedAvg + finetune 2 epochs": ("heart_personalized.yaml", [*PERSONAL, "federated.personalize.epochs=2"],
                                   "personal"),
    "FedPer (own head)": ("heart_personalized.yaml", [*PERSONAL, "federated.personalize.method=fedper"], "personal"),
    "FedRep (own head, 5 head epochs)": ("heart_personalized.yaml", [*PERSONAL, "federated.personalize.method=fedrep"],
                                         "personal"),
    "Ditto (lam 0.1)": ("heart_personalized.yaml", [*PERSONAL, "federated.personalize.method=ditto"], "personal"),
    "FedBN (batch-norm MLP)": ("heart_personalized.yaml", [*PERSONAL, "federated.personalize.method=fedbn",
                                                           "model.batchnorm=true"], "personal"),
    "FedAvg (batch-norm MLP)": ("heart_disease_sites.yaml", ["model.batchnorm=true"], "eval"),
}


def one(config: str, overrides: list[str], where: str, seed: int, uri: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from orchestrator.jobs.crossval import crossval_model
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(ROOT / "configs" / config, [f"seed={seed}", f"tracking.uri={uri}", "tracking.experiment=heart-table",
                                               f"data.path={ROOT / 'configs/data/heart_disease'}", *overrides])
    result = run_job(job)
    if where == "crossval":
        sites_job = load_job(ROOT / "configs/heart_local.yaml", [f"seed={seed}", f"tracking.uri={uri}",
                                                                  f"data.path={ROOT / 'configs/data/heart_disease'}"])
        matrix, _ = crossval_model(sites_job, [result.model_uri], log=False)
        return {s: next(iter(matrix[s].values()))["accuracy"] for s in SITES}
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics   # latest = the last round's
    return {s: metrics[f"hospital_{s}/{where}/accuracy"] for s in SITES}


def ceiling(repeats: int = 3) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frames = {s: pd.read_csv(ROOT / "configs/data/heart_disease" / f"{s}.csv") for s in SITES}
    models = {"logistic regression": lambda: LogisticRegression(max_iter=2000),
              "random forest": lambda: RandomForestClassifier(100, random_state=0),
              "gradient boosting": lambda: GradientBoostingClassifier(random_state=0)}
    thresholds = np.linspace(0.05, 0.95, 19)
    def rows(frame):
        return frame.drop(columns="target").to_numpy(float), (frame["target"].to_numpy() > 0).astype(int)

    out = {}
    for site, frame in frames.items():
        X, y = rows(frame)
        Xr, yr = rows(pd.concat([f for s, f in frames.items() if s != site]))
        row = {"rows": int(len(y)), "majority": float(max(y.mean(), 1 - y.mean()))}
        folds = min(10, int(np.bincount(y).min()))   # every fold holds a row of each class
        for name, make in models.items():
            for pooled in (False, True):
                scores = np.zeros((repeats, len(y)))
                for r in range(repeats):
                    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=r).split(X, y):
                        Xt, yt = (np.vstack([X[tr], Xr]), np.r_[y[tr], yr]) if pooled else (X[tr], y[tr])
                        net = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                            StandardScaler(), make()).fit(Xt, yt)
                        scores[r, te] = net.predict_proba(X[te])[:, 1]
                acc = [float(((scores > t) == y).mean()) for t in thresholds]
                key = f"{name}{' + other hospitals' if pooled else ''}"
                row[key] = {"at_0.5": float(((scores > 0.5) == y).mean()), "best": max(acc),
                            "best_threshold": float(thresholds[int(np.argmax(acc))])}
        out[site] = row
        best = max(v["best"] for v in row.values() if isinstance(v, dict))
        print(f"{site:12s} rows {row['rows']:3d}  majority {row['majority']:.3f}  best of any model, "
              f"optimistic threshold {best:.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46, 47, 48, 49, 50, 51])
    ap.add_argument("--ceiling", action="store_true", help="only the per-hospital ceiling of standard classifiers")
    ap.add_argument("--out", default=str(ROOT / "bench/results/heart_table.json"))
    args = ap.parse_args()
    if args.ceiling:
        out = Path(args.out).with_name("heart_ceiling.json")
        out.write_text(json.dumps(ceiling(), indent=1))
        return
    os.environ.setdefault("CONSORTIUM_HOME", tempfile.mkdtemp(prefix="heart-table-"))
    from orchestrator.jobs.runtime import prepare_environment

    prepare_environment()
    uri = f"sqlite:///{tempfile.mkdtemp(prefix='heart-table-')}/mlruns.db"
    import numpy as np

    table = {}
    t0 = time.perf_counter()
    for name, (config, overrides, where) in METHODS.items():
        per_seed = [one(config, overrides, where, seed, uri) for seed in args.seeds]
        acc = {s: float(np.mean([r[s] for r in per_seed])) for s in SITES}
        means = [float(np.mean([r[s] for s in SITES])) for r in per_seed]
        table[name] = {"per_hospital": acc, "mean": float(np.mean(means)), "mean_std": float(np.std(means)),
                       "per_seed_means": means}
        print(f"{name:28s} " + " ".join(f"{acc[s]:.3f}" for s in SITES) +
              f"   mean {np.mean(means):.3f} ± {np.std(means):.3f}", flush=True)
    out = {"seeds": args.seeds, "sites": SITES, "methods": table, "wall_s": time.perf_counter() - t0,
           "protocol": "configs/heart_disease_sites.yaml split (test_fraction 0.25, seed-dependent), mlp [32], "
                       "15 rounds x 2 epochs (pooled and local: 30 epochs), accuracy on each hospital's own test rows"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("| method | " + " | ".join(SITES) + " | mean over hospitals |")
    print("|---|" + "---:|" * (len(SITES) + 1))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row['per_hospital'][s]:.3f}" for s in SITES) +
              f" | {row['mean']:.3f} ± {row['mean_std']:.3f} |")


if __name__ == "__main__":
    main()
