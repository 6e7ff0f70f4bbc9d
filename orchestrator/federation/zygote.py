"""The ClientApp process of a hospital's SuperNode, kept alive between messages.

Flower 1.42's SuperNode starts a new `flwr-clientapp` process for every message (census, each
round's train and evaluate): a fresh Python that imports torch and Flower, installs the FAB, imports
the app and prepares the hospital's rows again, seconds of CPU each time, most of a deployed round
(flwrlabs/flower#3670 asks for a ClientApp that stays). Here a tiny `flwr-clientapp` shim, first on
the SuperNode's PATH, hands a zygote its arguments, environment, working directory and standard
streams and returns the exit code; the zygote imported torch and Flower once, and by
CONSORTIUM_WARM_CLIENTAPP:

  1 (default)  one kept process (federation.kept), forked from the zygote, serves every message in turn
               (`adapters.flower.serve_task`): the FAB installed and the app imported once per FAB,
               what the app keeps in memory (a hospital's prepared rows) kept for the run. If it
               dies, the next message starts another.
  fork         a fresh process forked per message (each message's state fresh, as Flower's)
  0            off: Flower's own `flwr-clientapp` per message

The zygote imports only third-party libraries, never the app's packages (those come from the
submitted FAB); the processes it forks load the app from the FAB as `flwr-clientapp` does. If the
zygote does not answer, the shim runs the real `flwr-clientapp` instead.

    python -m orchestrator.federation.zygote SOCKET    # the zygote (rejoin.py starts it)
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import tempfile
from pathlib import Path

from orchestrator.federation.kept import Kept, receive, tell

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
        os.kill(pid, signum) if pid > 0 else None
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


MODE_ENV = "CONSORTIUM_WARM_CLIENTAPP"


def _reaped(pid: int) -> int:
    """The exit code of a child that has exited (or is about to): 128+N for a signal, as a shell says."""
    try:
        return _shell_code(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return 1


def _shell_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code   # a signal: 128+N, as a shell says


def serve(sock: str) -> None:
    for name in PRELOAD:  # what every ClientApp process needs, imported once
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a child imports it again, and reports any problem
            pass
    try:   # torch's first optimizer imports its compiler stack (~3 s): once, here
        import torch

        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    except Exception:  # noqa: BLE001 - as above
        pass
    from orchestrator.adapters.flower import TaskStopped, prompt_object_pulls, serve_task

    prompt_object_pulls()   # each child asks its SuperNode for a message's arrays promptly
    for name in [m for m in sys.modules if m.partition(".")[0] == "orchestrator"]:
        del sys.modules[name]   # the children import the app's packages from the FAB, as flwr-clientapp does
    mode = os.environ.get(MODE_ENV, "1")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    os.chmod(sock, 0o600)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    kept: Kept | None = None
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    while not stop["now"]:
        try:
            ready, _, _ = select.select([listener] + ([kept.chan] if kept else []), [], [], 0.2)
        except InterruptedError:
            ready = []
        if kept is not None and kept.chan in ready and not kept.answered():
            kept.gone(_reaped(kept.pid))   # its end of the channel closed: it has exited
            kept = None
        if listener in ready:
            conn, _ = listener.accept()
            try:
                request, fds = receive(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            # runtime dependency installation wants a process of its own (Flower's environment per run)
            if mode != "fork" and "--allow-runtime-dependency-installation" not in request["argv"]:
                for attempt in (1, 2):   # a kept process that died before the zygote noticed: another
                    try:
                        kept = kept or Kept(listener, serve_task, TaskStopped, [*fds, conn.fileno()])
                        kept.forward(request, fds, conn)
                        break
                    except OSError:
                        if kept is not None:
                            kept.gone(_reaped(kept.pid))
                            kept = None
                        if attempt == 2:
                            tell(conn, "0\n")
                            tell(conn, "1\n")
                            conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                _child(conn, listener, request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            tell(conn, f"{pid}\n")
        while True:  # reap, and tell each shim its child's exit code
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = _shell_code(status)
            if kept is not None and pid == kept.pid:
                kept.gone(code)
                kept = None
            conn = children.pop(pid, None)
            if conn is not None:
                tell(conn, f"{code}\n")
                conn.close()
    if kept is not None:
        kept.chan.close()   # it ends when idle (EOF), or at once on SIGTERM
        try:
            os.kill(kept.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
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
