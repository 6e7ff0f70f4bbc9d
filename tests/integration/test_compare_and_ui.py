"""Comparing runs: the compare/runs/models commands, the figures every run leaves, and the UI."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.tracking.ui import stop as stop_ui
from orchestrator.tracking.ui import wait_healthy
from tests.conftest import CONFIGS, free_port as _free_port

pytestmark = pytest.mark.integration
ARTIFACTS = Path(os.environ.get("CONSORTIUM_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A store holding two finished centralized runs that differ only in learning rate."""
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    work = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    results = [run_job(load_job(CONFIGS / "centralized.yaml",
                                [f"tracking.uri={uri}", "tracking.experiment=lr-study", "train.epochs=4",
                                 f"train.optimizer.lr={lr}", "tracking.register_model=study-mlp"]))
               for lr in (0.05, 0.2)]
    return {"uri": uri, "results": results, "dir": work}


def test_compare_shows_what_differs_and_the_final_metric_and_plots_it(two_runs):
    out_png = two_runs["dir"] / "cmp.png"
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["compare", "--experiment", "lr-study", "--tracking-uri", two_runs["uri"], "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    text = result.output
    client = MlflowClient(two_runs["uri"])
    for r in two_runs["results"]:
        run = client.get_run(r.run_id)
        assert run.info.run_name in text and r.run_id[:8] in text
        assert f"{r.final['eval/accuracy']:.4f}" in text
    assert "train.optimizer.lr=0.05" in text and "train.optimizer.lr=0.2" in text
    assert "train.epochs" not in text  # equal in both runs: not a difference
    assert "models:/study-mlp/1" in text and "models:/study-mlp/2" in text
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_compare_takes_run_ids_and_rejects_an_unknown_experiment(two_runs):
    first = two_runs["results"][0].run_id
    ok = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["compare", first, "--tracking-uri", two_runs["uri"], "--metric", "eval/loss"])
    assert ok.exit_code == 0 and first[:8] in ok.output and "final eval/loss" in ok.output
    bad = CliRunner().invoke(app, ["compare", "--experiment", "nope", "--tracking-uri", two_runs["uri"]])
    assert bad.exit_code == 2 and "no experiment 'nope'" in bad.output and "lr-study" in bad.output


def test_runs_and_models_list_what_the_store_holds(two_runs):
    runs = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["runs", "--tracking-uri", two_runs["uri"]])
    assert runs.exit_code == 0
    assert all(r.run_id in runs.output for r in two_runs["results"]) and "FINISHED" in runs.output
    models = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["models", "--tracking-uri", two_runs["uri"]])
    assert models.exit_code == 0 and "models:/study-mlp/2" in models.output


def _artifact_paths(uri: str, run_id: str) -> set[str]:
    client = MlflowClient(uri)
    found, todo = set(), [""]
    while todo:
        for a in client.list_artifacts(run_id, todo.pop() or None):
            (todo.append(a.path) if a.is_dir else found.add(a.path))
    return found


def test_a_federated_run_leaves_curves_partition_and_confusion_matrix(fedavg_run):
    uri, run_id = fedavg_run["uri"], fedavg_run["result"].run_id
    paths = _artifact_paths(uri, run_id)
    for p in ("plots/loss.png", "plots/accuracy.png", "plots/hospitals_accuracy.png", "plots/partition.png",
              "plots/confusion_matrix.png", "partition/hospitals.json", "metrics/confusion_matrix.json",
              "config/resolved.yaml"):
        assert p in paths, p
    client = MlflowClient(uri)
    part = client.download_artifacts(run_id, "partition/hospitals.json", str(fedavg_run["dir"]))
    import json

    hospitals = json.loads(Path(part).read_text())["hospitals"]
    run = client.get_run(run_id)
    assert [h["rows"] for h in hospitals] == [int(x) for x in run.data.params["federated.hospital_sizes"].split(",")]
    cm = json.loads(Path(client.download_artifacts(run_id, "metrics/confusion_matrix.json",
                                                   str(fedavg_run["dir"]))).read_text())
    matrix = cm["rows_true_columns_predicted"]
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    assert correct / total == pytest.approx(run.data.metrics["eval/accuracy"], abs=1e-9)
    assert run.info.run_name.startswith("hospitals-fedavg-fedavg-dirichlet0.5-10h-")
    assert "10 hospitals" in run.data.tags["mlflow.note.content"]


def test_a_centralized_run_leaves_curves_and_confusion_matrix(two_runs):
    paths = _artifact_paths(two_runs["uri"], two_runs["results"][0].run_id)
    assert {"plots/loss.png", "plots/accuracy.png", "plots/confusion_matrix.png"} <= paths
    assert "plots/partition.png" not in paths


def _start_ui(uri: str, port: int, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _printed_links(proc: subprocess.Popen, timeout: float = 120) -> list[tuple[str, str]]:
    """What `consortium ui` printed, as (label, URL) pairs, once it says the UI is up."""
    import re
    import threading

    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert any("Ctrl-C stops it" in line for line in lines), "".join(lines)
    return [(m.group(1).strip(), m.group(2)) for line in lines if (m := re.match(r"\s+(.+?)\s+(http://\S+)", line))]


def _group_alive(pgid: int) -> bool:
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid:
                return True
        except (ProcessLookupError, PermissionError):
            pass
    return False


def test_ui_serves_on_loopback_and_ctrl_c_leaves_nothing_running(two_runs):
    port = _free_port()
    proc = _start_ui(two_runs["uri"], port, two_runs["dir"])
    try:
        # what it printed, read first: Ctrl-C before the server answers leaves nothing to print
        links = [url for _, url in _printed_links(proc)]
        wait_healthy(port, proc, timeout=10)
        with socket.socket() as s:  # bound to the loopback address only
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", port)) == 0
        # compare works against a tracking server as well as a SQLite file
        over_http = CliRunner(env={"COLUMNS": "400"}).invoke(
            app, ["compare", "--experiment", "lr-study", "--tracking-uri", f"http://127.0.0.1:{port}"])
        assert over_http.exit_code == 0, over_http.output
        assert all(r.run_id[:8] in over_http.output for r in two_runs["results"])
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert links and all(url.startswith(f"http://127.0.0.1:{port}/") for url in links), links
    assert "Traceback" not in output, output
    time.sleep(1)
    assert not _group_alive(proc.pid), "the UI left processes behind"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.browser
def test_browser_compares_two_runs_in_the_mlflow_ui(two_runs):
    from playwright.sync_api import sync_playwright

    chromium = "/usr/bin/chromium"
    assert Path(chromium).exists(), "scripts/test.sh installs Debian's chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(two_runs["uri"])
    exp_id = client.get_experiment_by_name("lr-study").experiment_id
    names = [client.get_run(r.run_id).info.run_name for r in two_runs["results"]]
    port = _free_port()
    proc = _start_ui(two_runs["uri"], port, two_runs["dir"])
    try:
        printed = _printed_links(proc)
        # the links `consortium ui` prints: the experiment's training-runs table and the newest run
        (runs_url,) = [u for name, u in printed if name == "lr-study"]
        (run_url,) = [u for name, u in printed if name == "newest run"]
        newest = max(two_runs["results"], key=lambda r: client.get_run(r.run_id).info.start_time)
        assert f"/#/experiments/{exp_id}/runs/{newest.run_id}?" in run_url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(run_url)   # the run itself: its name, its metrics
            page.get_by_text(client.get_run(newest.run_id).info.run_name).first.wait_for(timeout=60_000)
            page.get_by_text("eval/accuracy").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "ui_run.png"))
            page.goto(runs_url)  # lands on the training runs, not on the GenAI overview
            page.get_by_role("heading", name="Runs", exact=True).first.wait_for(timeout=60_000)
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            assert page.get_by_role("heading", name="Overview").count() == 0   # not the GenAI overview
            page.screenshot(path=str(ARTIFACTS / "ui_runs.png"))
            for name in names:
                row = page.get_by_role("row").filter(has_text=name).first
                row.get_by_role("checkbox").first.check()
            page.get_by_role("button", name="Compare").first.click()
            for name in names:
                page.get_by_text(name).first.wait_for(timeout=60_000)
            page.get_by_text("eval/accuracy").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "ui_compare.png"), full_page=True)
            # The metric's own link opens its chart for both runs.
            page.get_by_role("link", name="eval/accuracy").first.click()
            page.locator(".js-plotly-plot, canvas").first.wait_for(timeout=60_000)
            for name in names:
                page.get_by_text(name).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "ui_eval_accuracy_chart.png"))
            page.goto(f"http://127.0.0.1:{port}/#/models/study-mlp")
            page.get_by_text("Version 2").first.wait_for(timeout=60_000)
            page.get_by_text("Version 1").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "ui_model_versions.png"))
            browser.close()
    finally:
        stop_ui(proc)  # SIGTERM: the CLI stops the MLflow server it started
    time.sleep(1)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the MLflow server outlived `consortium ui`"
    assert (ARTIFACTS / "ui_compare.png").stat().st_size > 10_000
