"""Bad input in real processes: exit 2 (or 1 once started), one clear message naming the key or
file, no traceback, and nothing left RUNNING in MLflow. (The in-process table of config mistakes
is tests/unit/test_config.py; these need a store, a server address or a whole job.)"""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, free_port, run_cli

pytestmark = pytest.mark.integration


def _no_running_runs(store: str) -> None:
    client = MlflowClient(store)
    try:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    except Exception:
        return
    assert not [r for r in runs if r.info.status == "RUNNING"]


def _csv(path, header: str, rows: list[str]) -> str:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


CASES = [
    # (id, config, overrides, expected exit, text the message must contain)
    ("nan-only-column", "centralized.yaml", ["data.source=csv", "data.path={tmp}/nan_col.csv"], 2,
     "column 'blank' has no values"),
    ("single-class-data", "centralized.yaml", ["data.source=csv", "data.path={tmp}/one_class.csv"], 2,
     "has a single class"),
    ("too-many-hospitals-for-rows", "hospitals_fedavg.yaml", ["federated.num_clients=100"], 2,
     "federated.num_clients"),
    ("invalid-registered-model-name", "centralized.yaml", ["tracking.register_model=bad/name:v1"], 2,
     "tracking.register_model"),
    ("unreachable-tracking-uri", "centralized.yaml", ["tracking.uri=http://127.0.0.1:{port}"], 2,
     "nothing answers at http://127.0.0.1:"),
    ("unknown-tracking-scheme", "centralized.yaml", ["tracking.uri=ftp://example/x"], 2, "tracking.uri"),
    ("unreachable-ray-address", "cluster_ddp.yaml", ["ray.address=127.0.0.1:{port}"], 2, "nothing answers at"),
    ("missing-source-model", "centralized.yaml", ["model.init_from=models:/absent/1"], 2, "model.init_from"),
]


@pytest.mark.parametrize("case,config,overrides,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_a_real_process(tmp_path, case, config, overrides, code, expected):
    rows = [f"{i},{(i * 7) % 11},{i % 2}" for i in range(60)]
    _csv(tmp_path / "nan_col.csv", "x,blank,target", [f"{i},,{i % 2}" for i in range(60)])
    _csv(tmp_path / "one_class.csv", "x,y,target", [r.rsplit(",", 1)[0] + ",1" for r in rows])
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [o.replace("{tmp}", str(tmp_path)).replace("{port}", str(port)) for o in overrides]
    if not any(a.startswith("tracking.uri=") for a in args):
        args.append(f"tracking.uri={store}")
    proc = run_cli("run", str(CONFIGS / config), *args, cwd=tmp_path, timeout=180)
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert expected in " ".join(text.split()), text
    assert "Traceback" not in text
    _no_running_runs(store)
