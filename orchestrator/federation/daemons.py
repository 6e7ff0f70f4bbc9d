"""Start and stop a SuperLink and SuperNodes with Consortium's settings.

TLS and SuperNode authentication are the default; `insecure=True` turns both off (tests of the
plain protocol only: every update then travels in the clear and any process can join).

    front       nginx on H:P, TLS, the hospitals' Fleet routes only (federation.front), when the
                SuperLink listens on 127.0.0.1:CONTROL for the coordinator's operators
    superlink   flower-superlink --host H --port P --ssl-* (the consortium's certificate)
                --enable-supernode-auth --database STATE/superlink.db (registrations survive a restart)
                --disable-runtime-dependency-installation (the SuperLink runs this environment;
                it installs nothing it is sent)
    supernode   (through `rejoin`, which restarts it until admitted after a crash)
                flower-supernode --superlink HOST:PORT --root-certificates CA
                --auth-supernode-private-key KEY --node-config 'partition-id=N num-partitions=M
                data-path="CSV" cache-dir="..." site-dir="..." policy="..."' --port LOCAL (its own
                Runtime API, one per node)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.federation.flower import Link, binary, environment, wait_listening


@dataclass
class Daemon:
    """A program we started, in its own process group (its children go with it); `companions`
    (the SuperLink's front) are stopped with it."""
    name: str
    proc: subprocess.Popen
    log: Path
    argv: list[str] = field(default_factory=list)
    companions: list[Daemon] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None and all(c.alive() for c in self.companions)

    def stop(self, timeout: float = 10.0) -> None:
        for c in self.companions:
            c.stop(timeout)
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """As a crash would: SIGKILL to the node and its ClientApp processes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux), so a node never outlives the command that runs it (its own session keeps it out of
    the terminal's signals)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(name: str, argv: list[str], home: Path, log: Path, wrap: list[str] | None = None,
           env: dict | None = None) -> Daemon:
    home.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    proc = subprocess.Popen([*(wrap or []), *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=environment(home, env), start_new_session=True, cwd=str(home),
                            preexec_fn=_die_with_parent)
    out.close()
    return Daemon(name, proc, log, argv)


def superlink_argv(host: str, port: int, state: Path, certs: Path | None) -> list[str]:
    argv = [binary("flower-superlink"), "--host", host, "--port", str(port),
            "--database", str(state / "superlink.db"), "--disable-runtime-dependency-installation"]
    if certs is None:
        return [*argv, "--insecure"]
    return [*argv, "--ssl-ca-certfile", str(certs / "ca.pem"), "--ssl-certfile", str(certs / "superlink.pem"),
            "--ssl-keyfile", str(certs / "superlink.key"), "--enable-supernode-auth"]


def start_superlink(host: str, port: int, state: Path, certs: Path | None, wrap: list[str] | None = None,
                    env: dict | None = None, wait_s: float = 60.0, dial: str | None = None,
                    control_port: int | None = None) -> Daemon:
    """A SuperLink serving on HOST:PORT; returns once it accepts connections (at `dial`, default
    HOST:PORT, 127.0.0.1 for a wildcard host: inside a network namespace the caller dials through
    `wrap` itself). With `control_port` (TLS only) the SuperLink itself listens on
    127.0.0.1:`control_port`, where the coordinator's operators reach its Control API, and its front
    (`federation.front`: nginx) on HOST:PORT passes the hospitals' Fleet routes only. Whatever
    started is stopped again when the start fails."""
    state.mkdir(parents=True, exist_ok=True)
    state, certs = state.resolve(), certs.resolve() if certs is not None else None
    front_argv = None
    listen_host, listen_port = host, port
    if control_port is not None and certs is not None:
        from orchestrator.federation import front

        front_argv = front.argv(host, port, control_port, certs, state / "front")   # no nginx: said first
        listen_host, listen_port = "127.0.0.1", control_port
    fronted = front_argv is not None
    d = _spawn("superlink", superlink_argv(listen_host, listen_port, state, certs), state / "flwr-home",
               state / "superlink.log", wrap, env)
    try:
        if front_argv is not None:
            d.companions.append(_spawn("superlink-front", front_argv, state / "front", state / "front" / "nginx.log",
                                       wrap, env))
        if dial != "":
            wildcard = host in ("0.0.0.0", "::", "[::]", "")
            targets = [(d, f"127.0.0.1:{control_port}")] if fronted else []
            targets.append((d.companions[0] if fronted else d, dial or f"{'127.0.0.1' if wildcard else host}:{port}"))
            for daemon, address in targets:
                wait_listening(address, wait_s, daemon.proc, daemon.log)
    except BaseException:
        d.stop()
        raise
    return d


def node_config(partition_id: int, num_partitions: int, data: Path | None, cache: Path | None,
                site: Path | None = None, policy: Path | None = None) -> str:
    parts = [f"partition-id={partition_id}", f"num-partitions={num_partitions}"]
    for key, path in (("data-path", data), ("cache-dir", cache), ("site-dir", site), ("policy", policy)):
        if path is not None:
            parts.append(f'{key}="{path.resolve()}"')
    return " ".join(parts)


def supernode_argv(link: Link, key: Path | None, partition_id: int, num_partitions: int, data: Path | None,
                   port: int, state: Path, policy: Path | None = None, publishers: Path | None = None) -> list[str]:
    """flower-supernode's arguments: its node config names the hospital's data, its cache, its site
    directory (ledger and audit log, `clients.site`) and its site policy; `publishers` is Flower's
    --trusted-entities (the app publishers whose signed FABs it runs)."""
    # flower-supernode with short waits and its heartbeat as set (federation.supernode)
    argv = [sys.executable, "-m", "orchestrator.federation.supernode", "--superlink", link.address, "--port", str(port), "--host", "127.0.0.1",
            "--node-config", node_config(partition_id, num_partitions, data, state / "cache", state / "site", policy)]
    if publishers is not None:
        argv += ["--trusted-entities", str(publishers)]
    if link.ca is None:
        return [*argv, "--insecure"]
    argv += ["--root-certificates", str(link.ca)]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    return argv


def start_supernode(link: Link, key: Path | None, partition_id: int, num_partitions: int, data: Path | None,
                    port: int, state: Path, wrap: list[str] | None = None, env: dict | None = None,
                    policy: Path | None = None, publishers: Path | None = None) -> Daemon:
    """One hospital's SuperNode; it keeps its prepared rows, Flower state, ledger and audit log
    (STATE/site) under `state`, and enforces its site `policy`."""
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.federation.rejoin",
            *supernode_argv(link, key, partition_id, num_partitions, data, port, state, policy, publishers)]
    return _spawn(f"supernode-{partition_id}", argv, state / "flwr-home", state / "supernode.log", wrap, env)
