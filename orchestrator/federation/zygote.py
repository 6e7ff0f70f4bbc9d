"""Warm ClientApp processes for a hospital's SuperNode.

Flower's SuperNode starts a new `flwr-clientapp` process for every message (census, each round's
fit and evaluate): a fresh Python that imports torch, NumPy and Flower again, ~3-4 s of CPU each
time, most of a deployed round on a small machine. Here a zygote process imports those once and
forks a child per message; a tiny `flwr-clientapp` shim, first on the SuperNode's PATH, hands the
zygote its arguments, environment, working directory and standard streams and returns the
child's exit code. Each message still runs in a process of its own with fresh state, loading the
app from the FAB exactly as `flwr-clientapp` does: the zygote imports only third-party libraries,
never the app's packages (those come from the submitted FAB). If the zygote does not answer, the
shim runs the real `flwr-clientapp` instead. CONSORTIUM_WARM_CLIENTAPP=0 turns it off.

    python -m orchestrator.federation.zygote SOCKET    # the zygote (rejoin.py starts it)
"""
from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
import tempfile
from pathlib import Path

PRELOAD = ("numpy", "torch", "torch.nn", "torch.optim", "pandas", "sklearn", "sklearn.model_selection",
           "flwr", "flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.common",
           "flwr.supernode.cli.flwr_clientapp", "flwr.supernode.runtime.run_clientapp")

# The shim: standard library only, started with -S -E so it costs milliseconds, not seconds.
SHIM = '''#!{python} -SE
import array, json, os, signal, socket, sys
REAL, SOCK = {real!r}, {sock!r}
def fallback():
    os.execv(REAL, [REAL, *sys.argv[1:]])
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCK)
    req = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
    s.sendmsg([len(req).to_bytes(4, "big") + req],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    f = s.makefile("r")
    pid = int(f.readline())
except (OSError, ValueError):
    fallback()
def forward(signum, _frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
line = f.readline()
sys.exit(int(line) if line.strip() else 1)
'''


def install_shim(bin_dir: Path, sock: str) -> Path:
    """Write `bin_dir/flwr-clientapp` (put bin_dir first on the SuperNode's PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    real = str(Path(sys.executable).with_name("flwr-clientapp"))
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(SHIM.format(python=sys.executable, real=real, sock=sock))
    shim.chmod(0o755)
    return shim


def socket_path(near: Path | None = None) -> str:
    """Where the zygote listens: a Unix socket in a folder only this user can enter (the zygote
    runs what it is asked to as this user). Beside the node's state when the path is short enough
    (a socket path has ~107 bytes), else a folder in /tmp named after this process, so that one
    left by a process that died is swept by the next."""
    if near is not None:
        folder = near / "warm-clientapp"
        if len(str(folder / "s")) < 100:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
            (folder / "s").unlink(missing_ok=True)  # a zygote that died left it
            return str(folder / "s")
    _sweep_stale()
    return os.path.join(tempfile.mkdtemp(prefix=f"czy-{os.getpid()}-", dir="/tmp"), "s")


def _sweep_stale() -> None:
    import shutil

    for folder in Path("/tmp").glob("czy-*-*"):
        try:
            pid = int(folder.name.split("-")[1])
            if folder.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, OSError):
            continue


def _child(conn: socket.socket, listener: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the `flwr-clientapp` the SuperNode asked for."""
    try:
        listener.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        conn.close()
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["flwr-clientapp", *request["argv"]]
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        code = 0
        try:
            flwr_clientapp()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except BaseException:  # noqa: BLE001 - never return into the zygote's loop
        import traceback

        traceback.print_exc()
        os._exit(1)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    size = int.from_bytes(msg[:4], "big")
    body = msg[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise OSError("request cut short")
        body += more
    return json.loads(body), list(fds)


def serve(sock: str) -> None:
    for name in PRELOAD:  # what every ClientApp process needs, imported once
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a child imports it again, and reports any problem
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    os.chmod(sock, 0o600)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    while not stop["now"]:
        try:
            ready, _, _ = select.select([listener], [], [], 0.2)
        except InterruptedError:
            ready = []
        if ready:
            conn, _ = listener.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                _child(conn, listener, request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            try:
                conn.sendall(f"{pid}\n".encode())
            except OSError:
                pass
        while children:  # reap, and tell each shim its child's exit code
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    code = os.waitstatus_to_exitcode(status)
                    conn.sendall(f"{128 - code if code < 0 else code}\n".encode())  # a signal: 128+N, as a shell says
                except OSError:
                    pass
                conn.close()
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        os.unlink(sock)
        os.rmdir(os.path.dirname(sock))
    except OSError:
        pass


if __name__ == "__main__":
    serve(sys.argv[1])
