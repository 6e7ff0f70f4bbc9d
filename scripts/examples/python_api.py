"""Consortium from a notebook or a script: validate a job, run it, plot its history.

    .venv/bin/python scripts/examples/python_api.py [OUT_DIR]

Each cell of a notebook would be one block below. The run is tracked in OUT_DIR/mlruns.db (the
MLflow UI: `consortium ui --tracking-uri sqlite:///OUT_DIR/mlruns.db`), the plot is OUT_DIR/history.png.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator import UserError, run, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
out = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
out.mkdir(parents=True, exist_ok=True)
config = ROOT / "configs" / "hospitals_fedavg.yaml"
overrides = ["federated.rounds=5", "federated.engine=inline", f"tracking.uri=sqlite:///{out / 'mlruns.db'}",
             "tracking.experiment=notebook"]

# 1. A mistake is an exception naming the key, before anything runs
try:
    validate(config, overrides=["federated.rounds=zero"])
except UserError as exc:
    print(f"caught: {exc.problems[0]}")

# 2. Validate (opens the data and splits it, as `consortium validate` does), then run
job = validate(config, overrides=overrides)
print(f"{job.name}: {job.federated.num_clients} hospitals, {job.federated.rounds} rounds, strategy {job.federated.strategy.name}")
result = run(config, overrides=overrides)
print(f"run {result.run_id}: central accuracy {result.final['central/accuracy']:.4f}, model {result.registered}")

# 3. Plot the history (pooled metrics per round; per-hospital series are in MLflow)
fig, ax = plt.subplots(figsize=(5, 3))
for key in ("eval/accuracy", "central/accuracy"):
    steps = [s for s, _ in sorted(result.history[key])]
    ax.plot(steps, result.values(key), marker="o", label=key)
ax.set_xlabel("round")
ax.set_ylabel("accuracy")
ax.legend()
fig.tight_layout()
fig.savefig(out / "history.png", dpi=100)
print(f"wrote {out / 'history.png'}")
