"""A federation across hosts: network namespaces (`ip netns`, veth pairs) for a coordinator and three
hospitals, each hospital's CSV in a directory only its own SuperNode is given, TLS
over the links.

The coordinator's SuperLink listens on its own 127.0.0.1 only; what the network reaches is its front
(nginx), which passes the hospitals' Fleet routes and nothing else (tests/federation/test_guide.py
tries every control action from a rogue host and from a hospital's).

One federated job of 12 rounds (a few seconds each) carries the drills: a fourth SuperNode whose key was never
registered is refused while the others train; a hospital is killed in the middle of round 2 and
restarted, the round goes on without it (the failure counted) and it answers again afterwards;
the wire carries no protocol text in the clear. Hospitals without the consortium's CA (or with
another CA) are refused with a clear message before Flower is started.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.integration

SITES = ["cleveland", "hungarian", "va"]
PORT = 9093           # the front: what hospitals dial
ROUNDS = 12           # long enough for a crashed hospital to be let back in (~20 s) and train again
CONTROL = 9099        # the SuperLink itself, on the coordinator's 127.0.0.1


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def star(coord: str, hosts: list[str], subnet: int, tag: str, etc_hosts=None) -> Iterator[None]:
    """Namespace `coord` linked to each of `hosts` by a veth pair (vc{tag}{i} - vh{tag}{i}): host i
    is 10.SUBNET.i.2 and reaches `coord` at 10.SUBNET.i.1; `etc_hosts(i)`, if given, is that host's
    /etc/hosts (`ip netns exec` binds /etc/netns/NS/hosts). Skips the test where namespaces cannot
    be made; removes everything it made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    try:
        _ip("netns", "add", coord)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    made = [coord]
    try:
        _ip("-n", coord, "link", "set", "lo", "up")
        for i, ns in enumerate(hosts):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", f"vc{tag}{i}", "netns", coord, "type", "veth", "peer", "name", f"vh{tag}{i}",
                "netns", ns)
            _ip("-n", coord, "addr", "add", f"10.{subnet}.{i}.1/24", "dev", f"vc{tag}{i}")
            _ip("-n", ns, "addr", "add", f"10.{subnet}.{i}.2/24", "dev", f"vh{tag}{i}")
            _ip("-n", coord, "link", "set", f"vc{tag}{i}", "up")
            _ip("-n", ns, "link", "set", f"vh{tag}{i}", "up")
            if etc_hosts is not None:
                etc = Path("/etc/netns") / ns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(etc_hosts(i))
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


@pytest.fixture
def hosts():
    """Namespaces C (coordinator) and H0..H2 (hospitals); hospital i reaches C at 10.231.i.1."""
    tag = uuid.uuid4().hex[:4]
    coord, hospitals = f"cc{tag}", [f"ch{tag}{i}" for i in range(len(SITES))]
    with star(coord, hospitals, 231, tag):
        yield coord, hospitals, tag


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def _cli(ns: str, *args: str, env: dict, **kw) -> list[str]:
    return [*_in(ns), sys.executable, "-m", "orchestrator.cli", *args]


def test_three_hospitals_on_their_own_hosts_federate_over_tls_and_survive_an_intruder_and_a_crash(tmp_path, hosts):
    from orchestrator.federation.certs import hospital_key, make_certs
    from orchestrator.federation.daemons import start_superlink, start_supernode
    from orchestrator.federation.flower import CONNECTION, Link, flwr, json_out, register

    coord, hospital_ns, tag = hosts
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium"), "PYTHONPATH": str(ROOT)}
    os.environ["CONSORTIUM_HOME"] = env["CONSORTIUM_HOME"]
    certs = make_certs(tmp_path / "certs", [f"10.231.{i}.1" for i in range(len(SITES))], SITES)
    daemons = []
    capture = None
    try:
        superlink = start_superlink("0.0.0.0", PORT, tmp_path / "superlink", tmp_path / "certs", wrap=_in(coord),
                                    dial="", control_port=CONTROL)
        daemons.append(superlink)
        local = Link(f"127.0.0.1:{CONTROL}", certs.ca)   # the operator, on the coordinator host
        _wait_tls(coord, local)
        for name in SITES:
            register(local, certs.hospitals[name][1], name=name, wrap=_in(coord))
        capture_file = tmp_path / "hospital0.pcap"
        capture = _capture(coord, f"vc{tag}0", capture_file)

        def node(i: int, key: Path, name: str, pid: int):
            data = tmp_path / f"host-{name}" / "data"  # only this hospital's SuperNode is given this directory
            data.mkdir(parents=True, exist_ok=True)
            shutil.copy(CONFIGS / "data" / "heart_disease" / f"{name}.csv", data / f"{name}.csv")
            link = Link(f"10.231.{i}.1:{PORT}", certs.ca)
            return start_supernode(link, key, pid, len(SITES), data / f"{name}.csv", 9094 + pid,
                                   tmp_path / f"host-{name}" / "node", wrap=_in(hospital_ns[i]))

        nodes = {pid: node(pid, certs.hospitals[name][0], name, pid) for pid, name in enumerate(SITES)}
        daemons += nodes.values()
        intruder_key, _ = hospital_key(tmp_path / "unregistered", "intruder")  # never registered
        intruder = node(0, intruder_key, "switzerland", 3)
        daemons.append(intruder)

        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        submit = subprocess.Popen(
            _cli(coord, "run", str(CONFIGS / "heart_disease_sites.yaml"), "federated.engine=deployment",
                 f"federated.superlink=127.0.0.1:{CONTROL}", f"federated.root_certificates={certs.ca}",
                 "federated.num_clients=3", f"federated.rounds={ROUNDS}", "federated.round_timeout_s=45",
                 "train.epochs=150",   # training long enough (~1 s) that the crash lands in it, not in evaluation
                 "data.path=/nonexistent/the-hospitals-hold-the-data", f"tracking.uri={uri}",
                 "tracking.experiment=multihost", "--json", env=env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        lines = []
        killed = False
        t_start = time.monotonic()
        for line in submit.stdout:
            lines.append(line)
            print(f"[{time.monotonic() - t_start:6.1f}s] {line}", end="")  # seen with -s
            if f"round 1/{ROUNDS}" in line and not killed:
                _kill_while_training(nodes[1])  # hospital 1 crashes in round 2 ...
                nodes[1] = node(1, certs.hospitals[SITES[1]][0], SITES[1], 1)  # ... and is restarted
                daemons.append(nodes[1])
                killed = True
        submit.wait(timeout=900)
        stderr = submit.stderr.read()
        assert submit.returncode == 0, "".join(lines)[-3000:] + stderr[-3000:]
        assert killed, "".join(lines)
        result = json.loads(lines[-1])
        flower_run = MlflowClient(uri).get_run(result["run_id"]).data.tags["federated.flower_run_id"]
        listed = json_out(flwr(local, "ls", CONNECTION, "--format", "json", wrap=_in(coord)))
        assert listed.get("success") and str(flower_run) in json.dumps(listed), listed   # the operator can
    finally:
        _stop(capture, daemons)

    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    # the intruder never took part: three hospitals, named after their own files
    assert {k.split("/")[0] for k in run.data.metrics if k.startswith("hospital_")} == {f"hospital_{s}" for s in SITES}
    assert "Failed to activate" in intruder.log.read_text() or not intruder.alive()
    # the crash: round 2 trained without hospital 1, counted as a failure; it answered again later
    assert history("train/failures")[2] >= 1 and history("train/hospitals")[2] == 2
    # ... and the round's line names it; the rounds' clock runs from the submission
    assert any(f"failed training ({SITES[1]}:" in line for line in lines), "".join(lines)
    assert "(0.0 s)" not in next(line for line in lines if line.startswith("round 1/")), "".join(lines)
    # (back once the SuperLink has given up its old connection: 20 s at the tests' 10 s heartbeat)
    trained = history("train/hospitals")
    assert any(trained[r] == 3 for r in range(3, ROUNDS + 1)) and history("eval/hospitals")[ROUNDS] == 3, \
        (trained, nodes[1].log.read_text()[-4000:])
    assert history("train/hospitals")[1] == 3
    # TLS on the wire: hospital 0's link carried traffic, none of Flower's or our protocol in clear
    if capture is None:
        return
    wire = capture_file.read_bytes()
    assert len(wire) > 20_000
    for text in (b"partition-id", b"num-examples", b"train_loss", b"cleveland", b"flwr"):
        assert text not in wire, text


def test_registrations_survive_a_superlink_restart_and_hospitals_without_the_ca_are_refused(tmp_path, hosts):
    from orchestrator.federation.certs import make_certs
    from orchestrator.federation.daemons import start_superlink
    from orchestrator.federation.flower import CONNECTION, Link, flwr, json_out, register

    coord, hospital_ns, _ = hosts
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium"), "PYTHONPATH": str(ROOT)}
    certs = make_certs(tmp_path / "certs", ["10.231.0.1"], ["cleveland"])
    other = make_certs(tmp_path / "other-ca", ["10.231.0.1"], [])
    local = Link(f"127.0.0.1:{CONTROL}", certs.ca)
    superlink = start_superlink("0.0.0.0", PORT, tmp_path / "superlink", tmp_path / "certs", wrap=_in(coord), dial="",
                                control_port=CONTROL)
    _wait_tls(coord, local)
    node_id = register(local, certs.hospitals["cleveland"][1], name="cleveland", wrap=_in(coord))
    superlink.stop()  # the state database keeps the registration
    superlink = start_superlink("0.0.0.0", PORT, tmp_path / "superlink", tmp_path / "certs", wrap=_in(coord), dial="",
                                control_port=CONTROL)
    try:
        _wait_tls(coord, local)
        listed = json_out(flwr(local, "supernode", "ls", CONNECTION, "--format", "json", wrap=_in(coord)))
        assert str(node_id) in [n["node-id"] for n in listed["nodes"]], listed
        data = CONFIGS / "data" / "heart_disease" / "cleveland.csv"
        base = ["federation", "supernode", "--superlink", f"10.231.0.1:{PORT}", "--key",
                str(certs.hospitals["cleveland"][0]), "--partition-id", "0", "--num-partitions", "1", "--data",
                str(data), "--state", str(tmp_path / "node")]
        missing = subprocess.run(_cli(hospital_ns[0], *base, env=env), capture_output=True, text=True, env=env,
                                 timeout=120)
        assert missing.returncode == 2, missing.stdout + missing.stderr
        assert "--ca" in missing.stderr and "CA certificate" in missing.stderr and "Traceback" not in missing.stderr
        wrong = subprocess.run(_cli(hospital_ns[0], *base, "--ca", str(other.ca), env=env), capture_output=True,
                               text=True, env=env, timeout=120)
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        assert "not trusted" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        superlink.stop()


def _capture(ns: str, iface: str, path: Path, *extra: str) -> subprocess.Popen | None:
    """tcpdump on `iface` inside `ns`, writing `path` (None where tcpdump is missing, outside CI;
    .ci/run installs Debian's tcpdump where it is missing)."""
    if shutil.which("tcpdump"):
        return subprocess.Popen([*_in(ns), shutil.which("tcpdump"), "-Z", "root", "-i", iface, "-U", *extra, "-w",
                                 str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.environ.get("CI"):
        pytest.fail("tcpdump is missing: the checks on the wire need it (apt-get install tcpdump)")
    return None


def _stop(capture: subprocess.Popen | None, daemons: list) -> None:
    if capture is not None:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=20)
    for d in daemons:
        d.stop()


def _wait_tls(ns: str, link) -> None:
    """The SuperLink inside `ns` answers a TLS handshake (checked from inside the namespace)."""
    code = ("import sys; from pathlib import Path; from orchestrator.federation.flower import tls_problem; "
            f"p = tls_problem({link.address!r}, Path({str(link.ca)!r}), timeout=60); print(p or ''); sys.exit(1 if p else 0)")
    proc = subprocess.run([*_in(ns), sys.executable, "-c", code], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _kill_while_training(node, timeout: float = 120.0) -> None:
    """SIGKILL a SuperNode (and its ClientApp) while it is handling a message, as a crash would."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process(node.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if any("flwr-clientapp" in _cmdline(k) for k in kids):
            break
        time.sleep(0.05)
    node.kill()


def _cmdline(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie: not handling a message
        return ""
