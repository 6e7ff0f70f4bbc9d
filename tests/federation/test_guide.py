"""deploy/federation/README.md, followed to the letter: its own commands, taken from its code blocks
(so the guide and this test cannot drift), run across network namespaces as a hospital's IT team
would run them: a coordinator, two hospitals and a rogue host holding the consortium's CA.

What is not the guide's is only where things are: `superlink.example.org` resolves (through
`ip netns exec`'s /etc/netns/NS/hosts) to the coordinator's address on each host's link; paths
under /etc/consortium, /data and /var/lib/consortium are this test's temp folders; the job is
configs/heart_disease_sites.yaml with the guide's deployment section, for 3 rounds.

The job trains on the hospitals' CSVs; the rogue host and a registered hospital's host can neither
register, list, submit nor stop; an unregistered key exits 2 within seconds with the fix; `kill -9`
of a hospital's command leaves nothing of its node running; the daemons leave no zombies.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import CONFIGS, ROOT
from tests.federation.test_multihost import _cli, _in, _wait_tls, star

pytestmark = pytest.mark.integration

GUIDE = ROOT / "deploy" / "federation" / "README.md"
HOSPITALS = ["cleveland", "hungarian"]
CONSORTIUM = str(ROOT / ".venv" / "bin" / "consortium")


def guide_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", GUIDE.read_text(), re.S)


def guide_commands() -> list[list[str]]:
    """Every command line of the guide's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in guide_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def the(prefix: list[str]) -> list[str]:
    found = [c for c in guide_commands() if c[:len(prefix)] == prefix]
    assert found, f"the guide has no `{' '.join(prefix)}` command"
    return found[0]


@pytest.fixture
def network():
    """Namespaces: the coordinator C; hospitals H0, H1 and a rogue host R, each reaching C at
    10.232.i.1 as `superlink.example.org`."""
    tag = uuid.uuid4().hex[:4]
    coord = f"gc{tag}"
    hosts = {name: f"g{i}{tag}" for i, name in enumerate([*HOSPITALS, "rogue"])}
    with star(coord, list(hosts.values()), 232, tag,
              etc_hosts=lambda i: f"127.0.0.1 localhost\n10.232.{i}.1 superlink.example.org\n"):
        yield coord, hosts


def _places(args: list[str], here: Path) -> list[str]:
    """The guide's machine paths, in this host's temp folder."""
    out = []
    for a in args:
        for where in ("/etc/consortium", "/var/lib/consortium", "/data"):
            if a.startswith(where):
                a = str(here / a.lstrip("/"))
        out.append(a)
    return out


def _run(ns: str, args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    assert args[0] == ".venv/bin/consortium", args
    return subprocess.run([*_in(ns), CONSORTIUM, *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _start(ns: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    assert args[0] == ".venv/bin/consortium", args
    out = open(log, "wb")
    return subprocess.Popen([*_in(ns), CONSORTIUM, *args[1:]], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _control_plane_refused(ns: str, front, control: str, private_key: Path, flower_run: str, env: dict,
                           tmp_path: Path) -> None:
    """From host `ns`: the front refuses every control action, and the SuperLink's own port is not
    reachable at all."""
    from orchestrator.federation.flower import CONNECTION, flwr, json_out, register

    with pytest.raises(RuntimeError, match="403"):
        register(front, private_key.with_suffix(".pub"), name="intruder", wrap=_in(ns))
    for args in (["ls"], ["supernode", "ls"], ["stop", str(flower_run)]):
        out = flwr(front, *args, CONNECTION, "--format", "json", wrap=_in(ns))
        said = json_out(out)
        assert not said.get("success") and "403" in said.get("error-message", out.stderr), (args, out.stdout, out.stderr)
    submit = subprocess.run(
        _cli(ns, "run", str(CONFIGS / "heart_disease_sites.yaml"), "federated.engine=deployment",
             f"federated.superlink={front.address}", f"federated.root_certificates={front.ca}",
             "federated.num_clients=3", "federated.rounds=1", "data.path=/the-hospitals-hold-the-data",
             f"tracking.uri=sqlite:///{tmp_path / f'{ns}.db'}", env=env),
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert submit.returncode != 0 and "403" in submit.stdout + submit.stderr, submit.stdout[-2000:] + submit.stderr[-2000:]
    code = ("import sys; from pathlib import Path; from orchestrator.federation.flower import tls_problem; "
            f"print(tls_problem({control!r}, Path({str(front.ca)!r}), timeout=2) or '')")
    probe = subprocess.run([*_in(ns), sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "cannot reach" in probe.stdout, probe.stdout + probe.stderr


def _tree(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_the_deployment_guide_works_to_the_letter_and_only_the_coordinator_controls(tmp_path, network):
    if not Path(CONSORTIUM).exists():
        pytest.skip("the guide runs .venv/bin/consortium: set up with scripts/setup.sh")
    coord_ns, hosts = network
    coord = tmp_path / "coordinator"
    coord.mkdir()
    where = {name: tmp_path / f"host-{name}" for name in hosts}
    for d in where.values():
        d.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}   # for the refusal checks' own `python -m orchestrator.cli`
    running: list[subprocess.Popen] = []
    try:
        # 1. the coordinator's CA and certificate (relative certs/, as the guide writes it)
        made = _run(coord_ns, the([".venv/bin/consortium", "federation", "certs"]), coord)
        assert made.returncode == 0, made.stderr
        # 2. each hospital's key pair, the public half sent to the coordinator
        keygen = the([".venv/bin/consortium", "federation", "keygen"])
        for name in HOSPITALS:
            args = _places([a.replace("cleveland", name) for a in keygen], where[name])
            assert _run(hosts[name], args, where[name]).returncode == 0
            shutil.copy(where[name] / "etc" / "consortium" / f"{name}.pub", coord / f"{name}.pub")
        #    ca.pem where step 5 reads it, as the guide installs it
        install = the(["install"])
        for name in [*HOSPITALS, "rogue"]:
            shutil.copy(coord / "certs" / "ca.pem", where[name] / "ca.pem")
            done = subprocess.run([*_in(hosts[name]), *_places(install, where[name])], cwd=where[name],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        # 3. the SuperLink (its front on 9093, itself on 127.0.0.1:9099)
        superlink = _places(the([".venv/bin/consortium", "federation", "superlink"]), coord)
        running.append(_start(coord_ns, superlink, coord, coord / "superlink.out"))
        from orchestrator.federation.flower import Link

        _wait_tls(coord_ns, Link("127.0.0.1:9099", coord / "certs" / "ca.pem"))
        # 4. the coordinator admits each hospital (relative .pub and certs/ca.pem, through 127.0.0.1:9099)
        for args in [c for c in guide_commands() if c[1:3] == ["federation", "register"]]:
            admitted = _run(coord_ns, args, coord)
            assert admitted.returncode == 0, admitted.stdout + admitted.stderr
        # 5. each hospital's SuperNode on its own CSV
        supernode = the([".venv/bin/consortium", "federation", "supernode"])
        for pid, name in enumerate(HOSPITALS):
            (where[name] / "data").mkdir()
            shutil.copy(CONFIGS / "data" / "heart_disease" / f"{name}.csv", where[name] / "data" / f"{name}.csv")
            args = [a.replace("cleveland", name) for a in supernode]
            args[args.index("--partition-id") + 1] = str(pid)
            running.append(_start(hosts[name], _places(args, where[name]), where[name], where[name] / "node.out"))
        # 6. the job: the guide's deployment section on the heart hospitals' job
        job = yaml.safe_load((CONFIGS / "heart_disease_sites.yaml").read_text())
        for section, values in yaml.safe_load(guide_blocks("yaml")[-1]).items():
            job.setdefault(section, {}).update(values)
        job["tracking"]["uri"] = f"sqlite:///{coord / 'mlruns.db'}"
        (coord / "job.yaml").write_text(yaml.safe_dump(job))
        submitted = _run(coord_ns, [*the([".venv/bin/consortium", "run"]), "federated.rounds=3", "--json"], coord,
                         timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        result = json.loads(submitted.stdout.strip().splitlines()[-1])
        run = MlflowClient(f"sqlite:///{coord / 'mlruns.db'}").get_run(result["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["data.source"] == "csv"
        # trained on the hospitals' own files: metrics named after them
        assert {k.split("/")[0] for k in run.data.metrics if k.startswith("hospital_")} == \
            {f"hospital_{n}" for n in HOSPITALS}

        # no zombies pile up after the rounds: Flower's SuperExec reaps a finished app process when
        # it starts the next one (Python's subprocess), so at most the last one waits, per SuperExec
        import psutil

        zombies = [p for d in running for p in _tree(d.pid) if p.status() == psutil.STATUS_ZOMBIE]
        parents = [p.ppid() for p in zombies]
        assert all(parents.count(pp) <= 1 for pp in parents), [(p.pid, p.name(), p.ppid()) for p in zombies]

        # only the coordinator controls: its operator lists runs and nodes and reaches stop (a finished
        # run: Flower answers, not the front's 403) ...
        from orchestrator.federation.flower import CONNECTION, flwr, json_out

        flower_run = run.data.tags["federated.flower_run_id"]
        operator = Link("127.0.0.1:9099", coord / "certs" / "ca.pem")
        for args in (["ls"], ["supernode", "ls"]):
            listed = json_out(flwr(operator, *args, CONNECTION, "--format", "json", wrap=_in(coord_ns)))
            assert listed.get("success"), (args, listed)
        stop = flwr(operator, "stop", str(flower_run), CONNECTION, "--format", "json", wrap=_in(coord_ns))
        # the front's refusal, by its words: a run id may hold the digits 403
        assert "registered hospitals only" not in stop.stdout + stop.stderr, stop.stdout + stop.stderr
        assert "Run is already finished" in stop.stdout + stop.stderr or json_out(stop).get("success"), stop.stdout
        # ... refused from the rogue host and from a registered hospital's
        for name in ("rogue", HOSPITALS[0]):
            key = where[name] / "etc" / "consortium" / name
            if name == "rogue":
                rogue_keygen = _places([a.replace("cleveland", "rogue") for a in keygen], where["rogue"])
                assert _run(hosts["rogue"], rogue_keygen, where["rogue"]).returncode == 0
            _control_plane_refused(hosts[name], Link("superlink.example.org:9093", where[name] / "ca.pem"),
                                   "superlink.example.org:9099", key, flower_run, env, tmp_path)

        # an unregistered key: exit 2 within seconds, naming the fix
        args = [a.replace("cleveland", "rogue") for a in supernode]
        args[args.index("--data"):args.index("--data") + 2] = []
        t0 = time.monotonic()
        refused = _run(hosts["rogue"], _places(args, where["rogue"]), where["rogue"], timeout=120)
        assert refused.returncode == 2 and time.monotonic() - t0 < 60, refused.stdout + refused.stderr
        assert "key not registered at the SuperLink" in refused.stderr and "federation register" in refused.stderr

        # kill -9 of a hospital's command: nothing of its node goes on
        wrapper = running[-1]
        node = _tree(wrapper.pid)
        assert node, "the hospital's command runs its node"
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in node):
            time.sleep(0.5)
        left = [p.pid for p in node if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, left
    finally:
        for proc in reversed(running):
            _stop(proc)


def test_a_superlink_on_an_address_this_host_lacks_is_refused_at_once_and_leaves_nothing_running(tmp_path):
    import psutil

    from orchestrator.federation.certs import make_certs

    make_certs(tmp_path / "certs", ["10.254.254.254"], [])
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "federation", "superlink", "--certs", "certs",
                          "--host", "10.254.254.254", "--port", "19193", "--control-port", "19199", "--state", "state"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and time.monotonic() - t0 < 60, out.stdout + out.stderr
    assert "--host 10.254.254.254" in out.stderr and "Traceback" not in out.stderr, out.stderr
    state = str(tmp_path / "state")
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if any(state in a for a in p.info["cmdline"] or [])]
    assert not left, left
