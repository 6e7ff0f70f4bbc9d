"""The ClientApp process a SuperNode keeps (`CONSORTIUM_WARM_CLIENTAPP=1`, federation.zygote): forked
from the zygote, it serves the messages the zygote forwards, one at a time, and answers each one's
exit code; `Kept` is the zygote's side of it. Also the request's wire between the `flwr-clientapp`
shim, the zygote and the kept process: a length-prefixed JSON request (arguments, environment,
working directory) with the shim's standard streams passed as file descriptors.
"""
from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys
import threading
from collections import deque


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A request and the standard streams that came with it."""
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


def send(chan: socket.socket, request: dict, fds: list[int]) -> None:
    """Pass a request and its standard streams on to the kept process."""
    body = json.dumps(request).encode()
    chan.sendmsg([len(body).to_bytes(4, "big") + body],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds[:3]))])


def _kept(chan: socket.socket, listener: socket.socket, serve_task, stopped: type[BaseException],
          inherited: list[int]) -> None:
    """In the kept process: serve each request the zygote forwards, one at a time, and answer its
    exit code. SIGTERM stops the task running (the SuperNode stopped it), or ends an idle process."""
    try:
        listener.close()
        for fd in inherited:   # the request's streams and connection the zygote held at the fork
            os.close(fd)
        busy, parent = threading.Event(), {"pid": 0}

        def on_term(_signum, _frame):
            if busy.is_set():
                busy.clear()
                raise stopped()
            os._exit(0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_term)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        threading.Thread(target=lambda: _watch_parent_of(parent, busy), daemon=True).start()
        devnull = os.open(os.devnull, os.O_RDWR)
        kept: dict = {}
        while True:
            try:
                request, fds = receive(chan)
            except (OSError, ValueError):
                os._exit(0)   # the zygote is gone
            code = 1
            try:
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                for fd in fds:
                    os.close(fd)
                os.environ.clear()
                os.environ.update(request["env"])
                os.chdir(request["cwd"])
                argv = request["argv"]
                parent["pid"] = int(argv[argv.index("--parent-pid") + 1]) if "--parent-pid" in argv else 0
                busy.set()
                code = serve_task(argv, kept)
            except stopped:
                code = 128 + signal.SIGTERM
            except SystemExit as exc:   # flwr-clientapp's own exits: --help, a bad argument
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # noqa: BLE001 - one message's failure; the process serves the next
                import traceback

                traceback.print_exc()
            finally:
                busy.clear()
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                for target in (0, 1, 2):   # the shim's streams are its own; nothing more goes there
                    os.dup2(devnull, target)
            chan.sendall(f"{code}\n".encode())
    except BaseException:  # noqa: BLE001 - never return into the zygote's loop
        import traceback

        traceback.print_exc()
        os._exit(1)


def _watch_parent_of(parent: dict, busy: threading.Event) -> None:
    """Stop the running task when the SuperNode that asked for it is gone (Flower's ClientApp process
    exits then): the next message comes from the SuperNode started again (federation.rejoin)."""
    import time

    while True:
        time.sleep(0.2)
        pid = parent["pid"]
        if busy.is_set() and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                if busy.is_set():
                    os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)


class Kept:
    """The zygote's side of the kept process: requests forwarded in order, exit codes in order."""

    def __init__(self, listener: socket.socket, serve_task, stopped: type[BaseException], inherited: list[int]):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _kept(theirs, listener, serve_task, stopped, inherited)
        theirs.close()
        self.pid, self.chan = pid, ours
        self.waiting: deque[socket.socket] = deque()

    def forward(self, request: dict, fds: list[int], conn: socket.socket) -> None:
        send(self.chan, request, fds)
        self.waiting.append(conn)
        tell(conn, f"{self.pid}\n")

    def answered(self) -> bool:
        """Pass on the exit codes that came back; False once the kept process is gone."""
        try:
            data = self.chan.recv(4096)
        except OSError:
            data = b""
        for line in data.decode().split():
            if self.waiting:
                conn = self.waiting.popleft()
                tell(conn, f"{line}\n")
                conn.close()
        return bool(data)

    def gone(self, code: int = 1) -> None:
        while self.waiting:
            conn = self.waiting.popleft()
            tell(conn, f"{code}\n")
            conn.close()
        self.chan.close()


def tell(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(text.encode())
    except OSError:
        pass
