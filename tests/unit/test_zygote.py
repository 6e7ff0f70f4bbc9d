"""Warm ClientApp processes (orchestrator.federation.zygote): the `flwr-clientapp` shim behaves as the
real command does (arguments, streams, exit codes, signals), and falls back to it without a zygote."""
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


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    sock = zygote.socket_path(tmp_path_factory.mktemp("node"))
    shim = zygote.install_shim(tmp_path_factory.mktemp("bin"), sock)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.federation.zygote", sock], cwd=ROOT)
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


def test_the_shim_runs_flwr_clientapp_in_a_fresh_child_with_its_exit_code(warm):
    shim, proc = warm
    t0 = time.monotonic()
    ok = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    warm_s = time.monotonic() - t0
    assert ok.returncode == 0 and "usage: flwr-clientapp" in ok.stdout, ok.stderr
    bad = subprocess.run([str(shim), "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "flwr-clientapp: error:" in bad.stderr
    assert not _children(proc.pid), "the zygote reaps every child"
    t0 = time.monotonic()
    subprocess.run([str(Path(sys.executable).with_name("flwr-clientapp")), "--help"], capture_output=True, timeout=60)
    cold_s = time.monotonic() - t0
    print(f"\nflwr-clientapp --help: warm {warm_s:.2f} s, cold {cold_s:.2f} s")
    assert warm_s < cold_s


def test_a_signal_to_the_shim_reaches_the_clientapp(warm):
    shim, proc = warm
    # a ClientApp waiting for a SuperNode that is not there: it retries until stopped
    task = subprocess.Popen([str(shim), "--runtime-api-address", f"127.0.0.1:{free_port()}", "--token", "t",
                             "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not _children(proc.pid):
        assert time.monotonic() < deadline and task.poll() is None, task.stdout.read()
        time.sleep(0.05)
    (child,) = _children(proc.pid)
    time.sleep(1.0)
    task.send_signal(signal.SIGTERM)
    task.wait(timeout=30)  # (Flower's own handler ends a stopped task as the real command does)
    deadline = time.monotonic() + 10
    while child in _children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child not in _children(proc.pid), "the ClientApp outlived its shim's SIGTERM"


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
