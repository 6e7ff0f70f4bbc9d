"""A hospital's SuperNode that comes back after a crash: `python -m orchestrator.federation.rejoin ARGV...`.

A SuperNode restarted right after a crash is refused by the SuperLink ("[code: 2004] Failed to
activate SuperNode", Flower's exit code 305) until the SuperLink has missed its heartbeats (Flower 1.42: twice
the 30 s interval, or `CONSORTIUM_HEARTBEAT_S`: federation.supernode) and marked the old connection offline. Here flower-supernode is started again
until it is admitted (or `CONSORTIUM_REJOIN_WAIT_S`, default 300 s, has passed). A node never
admitted from its state directory that is refused is not retried: its key is not registered, and
it exits 2 at once saying so. This process is
the attempts' subreaper (Linux), so the SuperExec a refused attempt leaves behind is stopped too,
and everything stays in this process group: stopping the group stops the hospital. Any other exit
code is passed on as is; SIGTERM/SIGINT stop the running attempt and end this process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REFUSED = "Failed to activate SuperNode"  # flwr's message for ExitCode 305 (its process exits with 1)
ADMITTED = "SuperNode ID:"                # flwr's line once the SuperLink has activated the node
NOT_REGISTERED = 2                        # our exit code for a key the SuperLink never admitted


def admitted_marker() -> Path | None:
    """A file beside the node's Flower home that says this node was admitted once (federation.daemons)."""
    home = os.environ.get("FLWR_HOME")
    return Path(home).parent / "admitted" if home else None


def _subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans(keep: int | None = None) -> None:
    """Stop the processes an attempt left behind (reparented to us as its subreaper), but `keep`."""
    me = os.getpid()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and int(entry) != keep:
            try:
                os.kill(int(entry), signal.SIGKILL)
                os.waitpid(int(entry), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _warm_clientapps(env: dict) -> subprocess.Popen | None:
    """The zygote that forks this node's ClientApp processes warm (federation.zygote); the
    SuperNode finds its `flwr-clientapp` shim first on PATH."""
    if os.environ.get("CONSORTIUM_WARM_CLIENTAPP", "1") == "0":  # federation.zygote: 1 kept, fork, 0 off
        return None
    from orchestrator.federation import zygote

    home = os.environ.get("FLWR_HOME")  # the node's state/flwr-home (federation.daemons)
    sock = zygote.socket_path(Path(home).parent if home else None)
    bin_dir = Path(sock).parent / "bin"
    zygote.install_shim(bin_dir, sock)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.Popen([sys.executable, "-m", "orchestrator.federation.zygote", sock])


def main(argv: list[str]) -> int:
    _subreaper()
    wait = float(os.environ.get("CONSORTIUM_REJOIN_WAIT_S", "300"))
    deadline = time.monotonic() + wait
    current: dict = {}
    env = dict(os.environ)
    warm = _warm_clientapps(env)
    try:
        return _attempts(argv, env, deadline, current, warm)
    finally:
        if warm is not None:
            _end(warm)
            _reap_orphans()
            _forget(warm)


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM, 10 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _forget(warm: subprocess.Popen) -> None:
    """The zygote's folder, if it made one in /tmp (one beside the node's state is kept)."""
    folder = os.path.dirname(warm.args[-1])
    if os.path.basename(folder).startswith("czy-"):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _attempts(argv: list[str], env: dict, deadline: float, current: dict, warm: subprocess.Popen | None) -> int:

    def stop(signum, _frame):
        if current.get("proc") is not None:
            _end(current["proc"])
        _reap_orphans()
        if warm is not None:
            _forget(warm)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    attempt = 0
    while True:
        attempt += 1
        proc = current["proc"] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        seen = {"refused": False}
        marker = admitted_marker()

        def relay(stream=proc.stdout):  # passed through to our log, read for the refusal and the admission
            for line in stream:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                seen["refused"] = seen["refused"] or REFUSED.encode() in line
                if ADMITTED.encode() in line and marker is not None:
                    marker.touch()

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        code = proc.wait()
        _reap_orphans(keep=warm.pid if warm is not None else None)  # its SuperExec, if it outlived the node
        reader.join(timeout=10)
        refused = seen["refused"]
        if code == 0 or not refused or time.monotonic() > deadline:
            return code
        if marker is not None and not marker.exists():   # refused, and never admitted from here
            print("[consortium] key not registered at the SuperLink: ask the coordinator to run `consortium "
                  "federation register NAME.pub` with this key's .pub (it was refused on its first connection; if "
                  "this node was connected from another machine moments ago, retry in a minute)", flush=True)
            return NOT_REGISTERED
        print(f"[consortium] SuperNode not admitted yet (attempt {attempt}): the SuperLink still holds this "
              "hospital's previous connection; retrying in 5 s", flush=True)
        time.sleep(5.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
