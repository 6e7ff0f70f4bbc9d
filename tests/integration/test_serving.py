"""The registered model serves a hospital's raw export: `consortium serve` (MLflow's scoring server)
and `consortium predict`, on the shipped breast-cancer federation's model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.integration


def _post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def central(fedavg_run):
    """The server's held-out rows of the run, as raw columns by name, and their true labels."""
    from orchestrator.jobs.plan import plan_data

    plan = plan_data(fedavg_run["job"])
    rows = pd.DataFrame(plan.central.X_test.astype(np.float64), columns=list(plan.schema.features))
    truth = [plan.schema.classes[i] for i in plan.central.y_test]
    return rows, truth, plan.schema.classes


def test_served_model_predicts_raw_rows_with_the_runs_accuracy_and_refuses_bad_rows(fedavg_run, central, tmp_path):
    rows, truth, classes = central
    model = fedavg_run["result"].registered
    port = free_port()
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", model, "--port", str(port),
                             "--tracking-uri", fedavg_run["uri"]], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() - t0 < 120, "the model server did not come up"
                time.sleep(0.3)
        print(f"\nserve: up in {time.monotonic() - t0:.1f} s")

        # a person's request: JSON dataframe_split, raw unscaled columns by name
        status, answer = _post(port, {"dataframe_split": rows.to_dict(orient="split", index=False)})
        assert status == 200, answer
        preds = answer["predictions"]
        assert len(preds) == len(rows)
        accuracy = float(np.mean([p["prediction"] == t for p, t in zip(preds, truth)]))
        assert accuracy == pytest.approx(fedavg_run["result"].final["central/accuracy"], abs=1e-9)
        for p in preds:
            assert sum(p[f"probability_{c}"] for c in classes) == pytest.approx(1.0, abs=1e-5)
            assert p["prediction"] == max(classes, key=lambda c: p[f"probability_{c}"])
        # the columns in another order are the same rows
        shuffled = rows[list(reversed(rows.columns))]
        status, again = _post(port, {"dataframe_split": shuffled.to_dict(orient="split", index=False)})
        assert status == 200 and [p["prediction"] for p in again["predictions"]] == [p["prediction"] for p in preds]

        # latency, for the note: one row, and 1 000 rows in one request
        one = {"dataframe_split": rows.iloc[:1].to_dict(orient="split", index=False)}
        many = {"dataframe_split": pd.concat([rows] * (1000 // len(rows) + 1)).iloc[:1000].to_dict(orient="split", index=False)}
        for name, body in (("1 row", one), ("1000 rows", many)):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                status, _ = _post(port, body)
                times.append(time.perf_counter() - t)
                assert status == 200
            print(f"serve: {name}: median {1000 * sorted(times)[2]:.1f} ms")

        # bad rows: a 4xx that says what is wrong, never a 500
        first = rows.iloc[:2]
        missing = first.drop(columns=[first.columns[3]])
        status, err = _post(port, {"dataframe_split": missing.to_dict(orient="split", index=False)})
        assert status == 400 and first.columns[3] in err["message"], (status, err)
        extra = first.assign(patient_id=[17, 18])
        status, err = _post(port, {"dataframe_split": extra.to_dict(orient="split", index=False)})
        assert status == 400 and "patient_id" in err["message"], (status, err)
        text = first.astype(object)
        text.iloc[0, 0] = "twelve"
        status, err = _post(port, {"dataframe_split": text.to_dict(orient="split", index=False)})
        assert 400 <= status < 500 and first.columns[0] in err["message"], (status, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    time.sleep(0.5)
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the scoring server outlived `consortium serve`"


def test_predict_writes_answers_next_to_the_rows(fedavg_run, central, tmp_path):
    rows, truth, classes = central
    rows.to_csv(tmp_path / "export.csv", index=False)
    out = run_cli("predict", fedavg_run["result"].registered, "export.csv", "--tracking-uri", fedavg_run["uri"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    written = pd.read_csv(tmp_path / "export.predictions.csv")
    assert list(written.columns) == [*rows.columns, "prediction", *(f"probability_{c}" for c in classes)]
    np.testing.assert_allclose(written[rows.columns].to_numpy(), rows.to_numpy())
    accuracy = float(np.mean(written["prediction"].astype(str).to_numpy() == np.asarray(truth)))
    assert accuracy == pytest.approx(fedavg_run["result"].final["central/accuracy"], abs=1e-9)

    bad = rows.iloc[:3].astype(object)
    bad.iloc[2, 4] = "n/a?"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = run_cli("predict", fedavg_run["result"].registered, "bad.csv", "--tracking-uri", fedavg_run["uri"],
                  cwd=tmp_path)
    assert out.returncode == 2 and f"column '{rows.columns[4]}', row 4" in out.stderr, out.stderr
    assert not (tmp_path / "bad.predictions.csv").exists()
    out = run_cli("predict", "models:/no-such-model/1", "export.csv", "--tracking-uri", fedavg_run["uri"], cwd=tmp_path)
    assert out.returncode == 2 and "models:/no-such-model/1" in out.stderr and "Traceback" not in out.stderr
