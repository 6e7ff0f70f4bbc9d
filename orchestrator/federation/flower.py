"""Flower's own programs, started and talked to the way its docs say (flwr 1.42).

    flower-superlink    the coordinator's server: one port for the hospitals (Fleet API), the
                        `flwr` CLI (Control API) and the ServerApp (Runtime API)
    flower-supernode    one per hospital; starts a `flwr-clientapp` process per message
    flwr run/log/ls     submit the Flower App, stream its logs, read its status
    flwr supernode register   admit a hospital's public key

The `flwr` CLI reads its connections from `$FLWR_HOME/config.toml`; `connection_home` writes a
private one per call, so a user's own Flower configuration is neither read nor changed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CONNECTION = "consortium"


@dataclass
class Link:
    """How to reach a SuperLink: HOST:PORT and the CA that signed its certificate."""
    address: str
    ca: Path | None = None        # None: insecure (no TLS)

    def check(self) -> None:
        """A clear error before Flower's retries: the CA file must exist and the TLS handshake
        with the SuperLink must succeed with it."""
        from orchestrator.spec.errors import ConfigError

        if self.ca is None:
            return
        if not self.ca.is_file():
            raise ConfigError("federated.root_certificates", [
                f"{self.ca}: no such file; the SuperLink speaks TLS, and the consortium's CA certificate "
                "(ca.pem from `consortium federation certs`) is needed to trust it"])
        problem = tls_problem(self.address, self.ca)
        if problem:
            raise ConfigError("federated.root_certificates", [problem])


def tls_problem(address: str, ca: Path, timeout: float = 10.0) -> str | None:
    """Why a TLS connection to `address` trusting only `ca` fails, or None."""
    import ssl

    host, _, port = address.rpartition(":")
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        return f"{ca}: not a PEM CA certificate ({exc})"
    ctx.set_alpn_protocols(["h2", "http/1.1"])   # what Flower's HTTP clients offer (the front speaks HTTP/1.1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
                with ctx.wrap_socket(sock, server_hostname=host.strip("[]")):
                    return None
        except ssl.SSLCertVerificationError as exc:
            return (f"the SuperLink at {address} is not trusted by {ca}: {exc.verify_message} (is this the "
                    "consortium's CA, and does the SuperLink's certificate name this address?)")
        except (ssl.SSLError, OSError) as exc:
            if time.monotonic() > deadline:
                return f"cannot reach the SuperLink at {address} over TLS: {exc}"
            time.sleep(0.5)


def certificate_sha256(address: str, ca: Path | None, timeout: float = 10.0) -> str:
    """The SHA-256 fingerprint (hex) of the TLS certificate the server at `address` presents."""
    import hashlib
    import ssl

    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()  # noqa: S323
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=host.strip("[]")) as tls:
            der = tls.getpeercert(binary_form=True)
    return hashlib.sha256(der or b"").hexdigest()


def binary(name: str) -> str:
    """A Flower program from this environment (the SuperLink and SuperNode start `flower-superexec`
    by name, so this environment's bin directory goes first on their PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def environment(flwr_home: Path, extra: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra or {})
    return env


def connection_home(link: Link) -> Path:
    """A private FLWR_HOME whose config.toml names `link` as the default connection."""
    home = Path(tempfile.mkdtemp(prefix="consortium-flwr-cli-"))
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{link.address}"']
    lines.append("insecure = true" if link.ca is None else f'root-certificates = "{link.ca.resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def flwr(link: Link, *args: str, timeout: float | None = 120.0, home: Path | None = None,
         wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    """`flwr ARGS... consortium` against `link` (run through `wrap`, e.g. `ip netns exec NS`); output captured."""
    own = home is None
    home = home or connection_home(link)
    try:
        return subprocess.run([*(wrap or []), binary("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                              env=environment(home), stdin=subprocess.DEVNULL)
    finally:
        if own:
            shutil.rmtree(home, ignore_errors=True)


def json_out(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a `flwr ... --format json` call printed, or {} (with its error kept)."""
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    text = proc.stdout.strip()
    start = text.find("{")
    if start >= 0:
        try:
            return json.loads(text[start:])
        except ValueError:
            pass
    return {}


def register(link: Link, public_key: Path, name: str | None = None, wrap: list[str] | None = None) -> int:
    """Admit the SuperNode holding the private half of `public_key`; its node id."""
    args = ["supernode", "register", str(public_key), CONNECTION, "--format", "json"]
    if name:
        args += ["--name", name]
    proc = flwr(link, *args, wrap=wrap)
    out = json_out(proc)
    if not out.get("success"):
        detail = (out.get("error-message") or proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"registering {public_key} at {link.address} failed: {detail[-1] if detail else proc.returncode}")
    return int(out["node-id"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(address: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with code {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {address} after {timeout:.0f}s")
