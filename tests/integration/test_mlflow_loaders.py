"""The registered model through MLflow's own loaders, on hospitals' exports as pandas reads them:
integer columns (int64, or float64 where a cell is empty), a float column and text categories.
`mlflow.pyfunc.load_model`, `mlflow.models.predict` and `mlflow models serve` each answer what
`consortium predict` answers on the same rows; text in a number column is refused by name."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CONFIGS, free_port, run_cli

pytestmark = pytest.mark.integration

SITES = ("older", "younger", "rural")


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """Three hospitals' trial exports and the federated model registered from them."""
    work = tmp_path_factory.mktemp("trial")
    rng = np.random.default_rng(7)
    sites = work / "sites"
    sites.mkdir()
    for h, site in enumerate(SITES):
        n = 150
        age = rng.integers(30 + 10 * h, 80, n)                  # int64 as pandas reads it
        tsize = rng.integers(5, 90, n)                           # int64 ...
        bmi = rng.normal(26, 4, n).round(1)                      # float64
        grade = rng.choice(["I", "II", "III"], n)                # text
        menopause = rng.choice(["pre", "post"], n)
        risk = 0.04 * (age - 55) + 0.03 * (tsize - 45) + (grade == "III") * 1.5
        df = pd.DataFrame({"age": age, "tsize": tsize, "bmi": bmi, "grade": grade, "menopause": menopause,
                           "cens": (risk + rng.normal(0, 0.7, n) > 0).astype(int)})
        if site == "rural":
            df["tsize"] = df["tsize"].astype("float64")
            df.loc[[4, 9], "tsize"] = np.nan                    # ... float64 where a cell is empty
        df.to_csv(sites / f"{site}.csv", index=False)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    proc = run_cli("run", str(CONFIGS / "heart_disease_sites.yaml"), f"data.path={sites}", "data.target=cens",
                   "federated.engine=inline", "federated.rounds=5", f"tracking.uri={uri}",
                   "tracking.register_model=u4-model", "--json", cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["registered"] == "models:/u4-model/1"
    exports = {}
    for site in SITES:   # what a notebook holds: the hospital's file as read, the outcome dropped
        rows = pd.read_csv(sites / f"{site}.csv").drop(columns=["cens"])
        rows.to_csv(work / f"{site}_rows.csv", index=False)
        exports[site] = rows
    assert exports["older"]["age"].dtype == np.int64 and exports["rural"]["tsize"].dtype == np.float64
    return {"dir": work, "uri": uri, "model": result["registered"], "exports": exports}


def _consortium_predict(trial, site) -> pd.DataFrame:
    out = run_cli("predict", trial["model"], f"{site}_rows.csv", "--tracking-uri", trial["uri"], cwd=trial["dir"])
    assert out.returncode == 0, out.stdout + out.stderr
    answers = pd.read_csv(trial["dir"] / f"{site}_rows.predictions.csv")
    return answers[[c for c in answers.columns if c == "prediction" or c.startswith("probability_")]]


def _same(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(theirs.columns) == list(ours.columns)
    assert theirs["prediction"].astype(str).tolist() == ours["prediction"].astype(str).tolist()
    probs = [c for c in ours.columns if c.startswith("probability_")]
    np.testing.assert_allclose(theirs[probs].to_numpy(float), ours[probs].to_numpy(float), atol=1e-6)


@pytest.fixture(scope="module")
def ours(trial):
    return {site: _consortium_predict(trial, site) for site in SITES}


@pytest.fixture
def at_trial_store(trial, monkeypatch):
    """MLflow's loaders look the model up in the trial's store: set for this process (another test's
    in-process job may have set MLflow's global tracking URI, which outranks the environment)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trial["uri"])
    mlflow.set_tracking_uri(trial["uri"])
    yield
    mlflow.set_tracking_uri(None)


def test_pyfunc_load_model_predicts_each_hospitals_raw_file_as_consortium_predict_does(trial, ours, at_trial_store):
    import mlflow

    model = mlflow.pyfunc.load_model(trial["model"])
    for site in SITES:
        raw = pd.read_csv(trial["dir"] / f"{site}_rows.csv")
        _same(ours[site], model.predict(raw))
    # JSON numbers arrive as Python ints and floats, with None for an empty cell
    records = trial["exports"]["rural"].astype(object).where(trial["exports"]["rural"].notna(), None)
    _same(ours["rural"], model.predict(pd.DataFrame(records.to_dict(orient="records"))))


def test_text_in_a_number_column_is_refused_naming_the_column(trial, at_trial_store):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(trial["model"])
    bad = trial["exports"]["older"].head(3).astype(object)
    bad.loc[1, "tsize"] = "large"
    with pytest.raises(MlflowException, match=r"column 'tsize' takes numbers: row 1 holds 'large'"):
        model.predict(bad)
    missing = trial["exports"]["older"].head(3).drop(columns=["age"])
    with pytest.raises(MlflowException, match="age"):
        model.predict(missing)
    bad.to_csv(trial["dir"] / "bad_rows.csv", index=False)
    out = run_cli("predict", trial["model"], "bad_rows.csv", "--tracking-uri", trial["uri"], cwd=trial["dir"])
    assert out.returncode == 2 and "column 'tsize', row 3: 'large' is not a number" in out.stderr, out.stderr


def test_mlflow_models_predict_in_the_local_environment_answers_the_same(trial, ours, at_trial_store):
    import mlflow

    out = trial["dir"] / "models_predict.json"
    mlflow.models.predict(trial["model"], input_data=trial["exports"]["rural"], env_manager="local",
                          output_path=str(out))
    _same(ours["rural"], pd.DataFrame(json.loads(out.read_text())["predictions"]))


def _post(port: int, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _serving(cmd: list[str], port: int, env: dict, cwd) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                proc.kill()
                raise AssertionError(f"the scoring server did not come up: {proc.stdout.read()[-2000:]}")
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_the_scoring_servers_take_json_rows_holding_integers_and_csv(trial, ours):
    env = {**os.environ, "MLFLOW_TRACKING_URI": trial["uri"], "CONSORTIUM_HOME": str(trial["dir"] / ".consortium"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # MLflow execs `uvicorn`
    rows = trial["exports"]["rural"]
    records = json.loads(rows.to_json(orient="records"))   # ints as JSON integers, empty cells null
    assert isinstance(records[0]["age"], int) and records[4]["tsize"] is None
    bad = [dict(records[0], tsize="large")]

    # MLflow's own: `mlflow models serve` in this environment
    port = free_port()
    proc = _serving([sys.executable, "-m", "mlflow", "models", "serve", "-m", trial["model"], "--env-manager",
                     "local", "-h", "127.0.0.1", "-p", str(port)], port, env, trial["dir"])
    try:
        status, answer = _post(port, json.dumps({"dataframe_records": records}).encode(), "application/json")
        assert status == 200, answer
        _same(ours["rural"], pd.DataFrame(answer["predictions"]))
        status, err = _post(port, json.dumps({"dataframe_records": bad}).encode(), "application/json")
        assert status == 400 and "column 'tsize' takes numbers" in err["message"], (status, err)
    finally:
        _stop(proc)

    # ours, which also reads a CSV body (MLflow's CSV parser wants a dtype for every column)
    port = free_port()
    proc = _serving([sys.executable, "-m", "orchestrator.cli", "serve", trial["model"], "--port", str(port),
                     "--tracking-uri", trial["uri"]], port, env, trial["dir"])
    try:
        status, answer = _post(port, json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split",
                                                                                            index=False))}).encode(),
                               "application/json")
        assert status == 200, answer
        _same(ours["rural"], pd.DataFrame(answer["predictions"]))
        status, answer = _post(port, rows.to_csv(index=False).encode(), "text/csv")
        assert status == 200, answer
        _same(ours["rural"], pd.DataFrame(answer["predictions"]))
        status, err = _post(port, pd.DataFrame(bad).to_csv(index=False).encode(), "text/csv")
        assert status == 400 and "column 'tsize' takes numbers" in err["message"], (status, err)
    finally:
        _stop(proc)
