"""The console as a person meets it: a live progress display in a real pseudo-terminal, plain lines
in a pipe, `--quiet`, nothing of MLflow/Flower/Ray on the console (kept in the run as
logs/console.txt instead), the headline summary with the next commands, and Ctrl-C in a terminal."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, free_port, run_cli

NOISE = ("INFO", "WARNING", "Traceback", "flwr", "mlflow.", "ray.", "Registry store", "DeprecationWarning",
         "Creating initial MLflow database")


def _in_pty(args: list[str], cwd: Path, until=None, interrupt_when=None, timeout: float = 300) -> tuple[int, str]:
    """Run `consortium ARGS` with a 120-column pseudo-terminal as stdin/stdout/stderr, as a terminal
    would; `interrupt_when(output)` true: send SIGINT to its process group, as Ctrl-C does."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "CONSORTIUM_HOME": str(cwd / ".consortium"), "TERM": "xterm-256color"}
    for k in ("MLFLOW_TRACKING_URI", "COLUMNS", "CI", "NO_COLOR"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, interrupted = [], False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:   # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            text = b"".join(chunks).decode(errors="replace")
            if interrupt_when is not None and not interrupted and interrupt_when(text):
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_terminal_gets_a_live_display_the_headline_and_no_library_noise(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    code, text = _in_pty(["run", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.rounds=4",
                          f"tracking.uri={uri}"], tmp_path)
    plain = _plain(text)
    assert code == 0, plain[-3000:]
    assert "\x1b[?25l" in text and "\x1b[2K" in text, "no live display in a terminal"
    frames = [f for f in plain.split("\r") if f.strip().startswith("rounds")]
    assert any(re.search(r"rounds 4/4 .*\d+:\d\d:\d\d.*central/accuracy 0\.\d{4}.*10 hospitals answered", f)
               for f in frames), frames[-3:]
    assert any(re.search(r"rounds [1-3]/4 ", f) for f in frames), "the display moved round by round"
    assert not [n for n in NOISE if n in plain], [n for n in NOISE if n in plain]
    # the summary: the headline first, then the run, the model and the exact next commands
    head = plain[plain.index("accuracy"):]
    assert re.search(r"central\s+0\.\d{4}\s+0\.\d{4}\s+0\.\d{4}", head) and re.search(r"eval\s+0\.\d{4}", head)
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("consortium").experiment_id])[0]
    rid = run.info.run_id
    assert f"run         {rid}" in plain and "models:/hospitals-mlp/1" in plain
    assert f"/#/experiments/{run.info.experiment_id}/runs/{rid}?workflowType=machine_learning" in plain and "consortium ui" in plain
    assert "consortium compare --experiment consortium" in plain  # the first run of its job
    # what the libraries said is in the run, not lost: Flower's round log, without colour codes
    kept = Path(MlflowClient(uri).download_artifacts(rid, "logs/console.txt", str(tmp_path))).read_text()
    assert "[ROUND 4/4]" in kept and "\x1b[" not in kept, kept[:500]
    assert not list((tmp_path / ".consortium" / "logs").glob("console-*.txt")), "kept in the run: no copy left"
    # a second run of the job suggests comparing the two
    code, text = _in_pty(["run", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.rounds=1",
                          f"tracking.uri={uri}", "tracking.register_model=null"], tmp_path)
    newest = MlflowClient(uri).search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert code == 0 and f"consortium compare {rid} {newest.info.run_id}" in _plain(text)


def test_a_pipe_gets_one_plain_line_per_epoch_and_json(tmp_path):
    proc = run_cli("run", str(CONFIGS / "centralized.yaml"), "train.epochs=3", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr, "control codes in a pipe"
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/3", "2/3", "3/3"], epochs
    assert all(re.search(r"central/accuracy 0\.\d{4}", e) for e in epochs), epochs
    assert json.loads(lines[-1])["final"]["eval/accuracy"] > 0.5
    assert proc.stderr.strip() == "", proc.stderr[-2000:]   # nothing of the libraries, nothing of ours


def test_quiet_prints_only_the_summary(tmp_path):
    proc = run_cli("run", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.rounds=2", "--quiet",
                   "tracking.enabled=false", "tracking.register_model=null", "federated.engine=inline", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not re.search(r"^round |federated job", proc.stdout, re.M), proc.stdout
    assert re.search(r"central\s+0\.\d{4}", proc.stdout) and "wall time" in proc.stdout
    assert proc.stderr.strip() == ""
    # tracking off: the libraries' output has no run to go into, so its file stays
    assert list((tmp_path / ".consortium" / "logs").glob("console-*.txt"))


def test_ctrl_c_in_a_terminal_prints_one_line_and_no_traceback(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    code, text = _in_pty(["run", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.rounds=400",
                          f"tracking.uri={uri}", "tracking.register_model=null"], tmp_path,
                         interrupt_when=lambda out: re.search(r"rounds \d+/400", _plain(out)) is not None
                         and "hospitals answered" in _plain(out))
    plain = _plain(text)
    assert code == 130, plain[-3000:]
    assert "interrupted; the MLflow run is marked KILLED" in plain
    assert "Traceback" not in plain and "KeyboardInterrupt" not in plain, plain[-3000:]
    assert text.rfind("\x1b[?25h") > text.rfind("\x1b[?25l"), "the cursor was left hidden"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])
    assert run.info.status == "KILLED"
    assert client.get_metric_history(run.info.run_id, "central/accuracy"), "the rounds done were kept"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "logs")}
    assert "logs/console.txt" in artifacts


def test_consortium_ui_has_no_server_log_on_its_console(tmp_path):
    port = free_port()
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        log = tmp_path / ".consortium" / "logs" / "mlflow-ui.log"
        while time.monotonic() < deadline and not (log.exists() and "Uvicorn running" in log.read_text()):
            time.sleep(0.5)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning" in out and str(log) in out
    assert not [n for n in NOISE + ("Uvicorn", "Security middleware") if n in out + errs], out + errs
