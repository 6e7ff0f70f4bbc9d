"""Warm ClientApp processes (orchestrator.federation.zygote): the `flwr-clientapp` shim behaves as the
real command does (arguments, streams, exit codes, signals) whether one kept process serves every
message (the default) or a process is forked per message, and falls back to it without a zygote.
The kept process survives a task it was told to stop, and a new one serves after one dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.federation import zygote
from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module", params=["1", "fork"], ids=["kept", "fork"])
def warm(request, tmp_path_factory):
    sock = zygote.socket_path(tmp_path_factory.mktemp("node"))
    shim = zygote.install_shim(tmp_path_factory.mktemp("bin"), sock)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.federation.zygote", sock], cwd=ROOT,
                            env={**os.environ, zygote.MODE_ENV: request.param})
    proc.mode = request.param
    deadline = time.monotonic() + 120
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "the zygote did not come up"
        time.sleep(0.1)
    yield shim, proc
    proc.terminate()
    proc.wait(timeout=30)
    assert not os.path.exists(sock), "the zygote left its socket behind"


def _children(pid: int) -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process(pid).children()}


def test_the_shim_runs_flwr_clientapp_with_its_exit_code(warm):
    shim, proc = warm
    t0 = time.monotonic()
    ok = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    warm_s = time.monotonic() - t0
    assert ok.returncode == 0 and "usage: flwr-clientapp" in ok.stdout, ok.stderr
    served = _children(proc.pid)
    bad = subprocess.run([str(shim), "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "flwr-clientapp: error:" in bad.stderr
    if proc.mode == "fork":
        assert not _children(proc.pid), "the zygote reaps every child"
    else:   # one process served both, and waits for the next
        assert len(served) == 1 and _children(proc.pid) == served
    t0 = time.monotonic()
    subprocess.run([str(Path(sys.executable).with_name("flwr-clientapp")), "--help"], capture_output=True, timeout=60)
    cold_s = time.monotonic() - t0
    print(f"\nflwr-clientapp --help: warm ({proc.mode}) {warm_s:.2f} s, cold {cold_s:.2f} s")
    assert warm_s < cold_s


def _waiting_task(shim: Path) -> subprocess.Popen:
    """A ClientApp waiting for a SuperNode that is not there: it retries until stopped."""
    return subprocess.Popen([str(shim), "--runtime-api-address", f"127.0.0.1:{free_port()}", "--token", "t",
                             "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _serving(proc, task, before: set[int]) -> int:
    deadline = time.monotonic() + 30
    while not (_children(proc.pid) - before if proc.mode == "fork" else _children(proc.pid)):
        assert time.monotonic() < deadline and task.poll() is None, task.stdout.read()
        time.sleep(0.05)
    (child,) = _children(proc.pid) - before if proc.mode == "fork" else _children(proc.pid)
    return child


def test_a_signal_to_the_shim_stops_the_clientapps_task(warm):
    shim, proc = warm
    task = _waiting_task(shim)
    child = _serving(proc, task, set())
    time.sleep(1.0)
    task.send_signal(signal.SIGTERM)
    task.wait(timeout=30)  # (Flower's own handler ends a stopped task as the real command does)
    if proc.mode == "fork":
        deadline = time.monotonic() + 10
        while child in _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child not in _children(proc.pid), "the ClientApp outlived its shim's SIGTERM"
    else:   # the task stopped; the process that ran it serves the next message
        ok = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and _children(proc.pid) == {child}


def test_a_clientapp_process_killed_mid_task_is_reported_and_the_next_message_is_served(warm):
    shim, proc = warm
    before = _children(proc.pid)
    task = _waiting_task(shim)
    child = _serving(proc, task, before)
    time.sleep(1.0)   # the process has the task
    os.kill(child, signal.SIGKILL)
    assert task.wait(timeout=30) == 128 + signal.SIGKILL   # the shim says how its task ended, as a shell does
    ok = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "usage: flwr-clientapp" in ok.stdout
    left = _children(proc.pid)
    assert child not in left
    assert len(left) == (0 if proc.mode == "fork" else 1)   # kept: a new process serves, and stays


def test_unload_forgets_an_installed_apps_modules(tmp_path, monkeypatch):
    from orchestrator.adapters.flower import unload

    for version in ("one", "two"):
        app = tmp_path / version
        (app / "probe_app").mkdir(parents=True)
        (app / "probe_app" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "one"))
    import probe_app

    assert probe_app.VERSION == "one"
    unload(str(tmp_path / "one"))
    assert "probe_app" not in sys.modules and str(tmp_path / "one") not in sys.path
    monkeypatch.syspath_prepend(str(tmp_path / "two"))
    import probe_app as again

    assert again.VERSION == "two"
    unload(str(tmp_path / "two"))


def test_a_folder_a_dead_process_left_in_tmp_is_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = Path(f"/tmp/czy-{dead.pid}-test")
    left.mkdir()
    sock = zygote.socket_path(Path("/tmp") / ("x" * 120))  # too long for a socket: /tmp instead
    try:
        assert sock.startswith(f"/tmp/czy-{os.getpid()}-") and not left.exists()
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)
        shutil.rmtree(left, ignore_errors=True)


def test_without_a_zygote_the_shim_runs_the_real_command(tmp_path):
    shim = zygote.install_shim(tmp_path / "bin", str(tmp_path / "no-such-socket"))
    out = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: flwr-clientapp" in out.stdout
