"""The hospital holds the keys: each hospital's SuperNode, in a network namespace of its own, is
given its own site policy (`--policy`), keeps its privacy ledger and its audit log on its own disk,
and refuses what its policy forbids, with the reason recorded at the server.

One federation (a real SuperLink behind its TLS front, three authenticated SuperNodes) carries three
runs: a run asking for a strategy one hospital forbids and for personal models another keeps home;
two runs with local DP whose spend the ledger composes, the second one tightening a budget so that
a third run is refused; and, in that third run, a hospital SIGKILLed mid-round whose ledger still
holds what it sent. Cleveland's CSV carries a referral category held by 3 patients: with k = 5 it
is in none of the payloads that left (kept by its audit log). Its link is captured: the bytes its
audit log records as sent match what crossed the link, within TLS framing.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import CONFIGS, ROOT
from tests.federation.test_multihost import (  # noqa: F401 - hosts: the namespaces fixture
    CONTROL, PORT, SITES, _capture, _cli, _in, _kill_while_training, _stop, _wait_tls, hosts)

pytestmark = pytest.mark.integration

RARE = "telehealth-pilot"   # held by 3 of cleveland's patients


def _with_referral(src: Path, dst: Path, rare: int) -> None:
    lines = src.read_text().splitlines()
    out = [lines[0] + ",referral"]
    for i, row in enumerate(lines[1:]):
        out.append(row + "," + (RARE if i < rare else ("gp" if i % 2 else "emergency")))
    dst.write_text("\n".join(out) + "\n")


def _upstream(pcap: Path, src_ip: str) -> list[tuple[float, int]]:
    """(time, TCP payload bytes) of each packet `src_ip` sent, from a pcap (Ethernet, IPv4): the
    headers are all it needs."""
    data = pcap.read_bytes()
    src = bytes(int(p) for p in src_ip.split("."))
    out, at = [], 24
    while at + 16 <= len(data):
        sec, usec, caplen = struct.unpack_from("<III", data, at)
        frame = data[at + 16:at + 16 + caplen]
        at += 16 + caplen
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6 or frame[26:30] != src:
            continue
        ihl = (frame[14] & 0x0F) * 4
        ip_len = struct.unpack_from(">H", frame, 16)[0]
        out.append((sec + usec / 1e6, ip_len - ihl - (frame[14 + ihl + 12] >> 4) * 4))
    return out


def test_site_policies_ledgers_and_audit_logs_at_three_hospitals_on_their_own_hosts(tmp_path, hosts):
    from clients import audit
    from clients.ledger import Ledger, epsilon
    from orchestrator.federation.certs import make_certs
    from orchestrator.federation.daemons import start_superlink, start_supernode
    from orchestrator.federation.flower import Link, register

    coord, hospital_ns, tag = hosts
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium"), "PYTHONPATH": str(ROOT)}
    os.environ["CONSORTIUM_HOME"] = env["CONSORTIUM_HOME"]
    certs = make_certs(tmp_path / "certs", [f"10.231.{i}.1" for i in range(len(SITES))], SITES)
    policies = {
        "cleveland": {"min_count": 5, "privacy": {"epsilon_budget": 1000.0}, "share": {"personal_models": True},
                      "audit": {"keep_payloads": True}},
        "hungarian": {"share": {"personal_models": False}},
        "va": {"allow": {"strategies": ["fedavg"]}},
    }
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    daemons, capture, nodes = [], None, {}
    pcap = tmp_path / "cleveland.pcap"

    def host(name: str) -> Path:
        return tmp_path / f"host-{name}"

    def run(*overrides: str, kill: int | None = None) -> tuple[dict, list[str]]:
        proc = subprocess.Popen(
            _cli(coord, "run", str(CONFIGS / "heart_disease_sites.yaml"), "federated.engine=deployment",
                 f"federated.superlink=127.0.0.1:{CONTROL}", f"federated.root_certificates={certs.ca}",
                 "federated.num_clients=3", "federated.rounds=2", "federated.round_timeout_s=45",
                 "model.hidden=[256,256]", "data.path=/nonexistent/the-hospitals-hold-the-data",
                 f"tracking.uri={uri}", "tracking.experiment=sites", "--json", *overrides, env=env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if kill is not None and "round 1/2" in line:
                _kill_while_training(nodes[kill])   # SIGKILL while it trains round 2
                kill = None
        proc.wait(timeout=600)
        assert proc.returncode == 0, "".join(lines)[-3000:] + proc.stderr.read()[-3000:]
        return json.loads(lines[-1]), lines

    try:
        daemons.append(start_superlink("0.0.0.0", PORT, tmp_path / "superlink", tmp_path / "certs", wrap=_in(coord),
                                       dial="", control_port=CONTROL))
        local = Link(f"127.0.0.1:{CONTROL}", certs.ca)
        _wait_tls(coord, local)
        for name in SITES:
            register(local, certs.hospitals[name][1], name=name, wrap=_in(coord))
        capture = _capture(coord, f"vc{tag}0", pcap, "-s", "128")   # headers: lengths are all it reads
        for pid, name in enumerate(SITES):
            data = host(name) / "data"
            data.mkdir(parents=True)
            _with_referral(CONFIGS / "data" / "heart_disease" / f"{name}.csv", data / f"{name}.csv",
                           rare=3 if name == "cleveland" else 0)
            (host(name) / "policy.yaml").write_text(json.dumps(policies[name]))
            nodes[pid] = start_supernode(Link(f"10.231.{pid}.1:{PORT}", certs.ca), certs.hospitals[name][0], pid,
                                         len(SITES), data / f"{name}.csv", 9094 + pid, host(name) / "node",
                                         wrap=_in(hospital_ns[pid]), policy=host(name) / "policy.yaml")
            daemons.append(nodes[pid])

        # run A: a strategy va forbids, personal models hungarian keeps home; cleveland alone trains
        a, lines_a = run("federated.strategy.name=fedadam", "federated.personalize.method=finetune",
                         "federated.personalize.share_models=true")
        # runs B and C: local DP at every hospital; before C, cleveland's IT lowers its budget below B + C
        dp = ["federated.dp.mode=local", "federated.dp.noise_multiplier=1.5"]
        b, _ = run(*dp)
        book = Ledger(host("cleveland") / "node" / "site" / "ledger.db")
        dataset = str((host("cleveland") / "data" / "cleveland.csv").resolve())
        spent_b = book.releases(dataset)
        budget = (epsilon(spent_b, 1e-5) + epsilon(spent_b * 2, 1e-5)) / 2
        policies["cleveland"]["privacy"]["epsilon_budget"] = budget
        (host("cleveland") / "policy.yaml").write_text(json.dumps(policies["cleveland"]))
        c, lines_c = run(*dp, "train.epochs=150", kill=1)   # training long enough (seconds) for the kill to land in it
    finally:
        _stop(capture, daemons)

    client = MlflowClient(uri)
    run_a, run_b, run_c = (client.get_run(r["run_id"]) for r in (a, b, c))
    # refusals: each hospital's reason, in the server's log and in the run's record
    reasons = run_a.data.tags["site.refusals"]
    assert "hospital va refuses: strategy fedadam is not allowed by its policy (allowed: fedavg)" in reasons
    assert "hospital hungarian refuses: its policy keeps personal models at the hospital" in reasons
    assert any("hospital va refuses: strategy fedadam" in line for line in lines_a), "".join(lines_a)
    assert {f"site.{s}.policy" for s in SITES} <= set(run_a.data.tags)
    assert run_a.data.metrics["train/hospitals"] == 1 and "hospital_cleveland/train/loss" in run_a.data.metrics
    # the ledger: run B's spend, then run C refused at cleveland for its budget, with the sum spent named
    assert "hospital_cleveland/site/epsilon_dataset" in run_b.data.metrics
    assert f"hospital cleveland refuses: epsilon" in run_c.data.tags["site.refusals"]
    assert f"would pass its budget {budget:g}" in run_c.data.tags["site.refusals"]
    assert {r["run"] for r in book.summary()} == {run_b.info.run_id}   # A spent nothing (no DP); C was refused
    assert epsilon(book.releases(dataset), 1e-5) == pytest.approx(
        run_b.data.metrics["hospital_cleveland/site/epsilon_dataset"])
    # SIGKILL mid-round: hungarian's ledger holds exactly the rounds whose updates it sent (the audit log's)
    hungary = host("hungarian") / "node" / "site"
    sent = {(e["run"], e["round"]) for e in audit.entries(hungary / "audit.jsonl")
            if e["direction"] == "out" and e["type"] == "train" and not e.get("refused")}
    kept = Ledger(hungary / "ledger.db")
    kept_rounds = {(r["run"], n) for r in kept.summary() for n in kept.rounds(r["dataset"], r["run"])}
    assert (run_c.info.run_id, 1) in sent and (run_c.info.run_id, 2) not in sent
    assert kept_rounds == sent
    # k-anonymity on the payloads themselves: the rare referral never left cleveland
    cleveland = host("cleveland") / "node" / "site"
    assert RARE.encode() in (host("cleveland") / "data" / "cleveland.csv").read_bytes()
    payloads = list((cleveland / "payloads").iterdir())
    assert len(payloads) >= 10
    assert all(RARE.encode() not in p.read_bytes() for p in payloads)
    assert any(b"emergency" in p.read_bytes() for p in payloads)   # the category column itself did travel
    # the audit log: an entry for every message, whole; the bytes it says left match the wire
    log = cleveland / "audit.jsonl"
    entries = audit.entries(log)
    assert audit.verify(log) == (len(entries), [])
    for r in (run_a, run_b):
        types = [e["type"] for e in entries if e["run"] == r.info.run_id and e["direction"] == "in"]
        assert types.count("train") == 2 and types.count("evaluate") == 2 and "describe" in types
    assert len([e for e in entries if e["direction"] == "out"]) == len([e for e in entries if e["direction"] == "in"])
    if capture is not None:
        # each message sent: the link carried at least its logged bytes, and no more than them plus the
        # transport's share (a gRPC request per object, signed by the node; HTTP/2 and TLS framing)
        packets = _upstream(pcap, "10.231.0.2")
        sent = [e for e in entries if e["direction"] == "out"]
        arrived = sorted(e["time"] for e in entries if e["direction"] == "in")
        for e in sent:   # its upload lies between the reply and the next message in (the node sends one at a time)
            until = min([t for t in arrived if t > e["time"]] + [e["time"] + 3.0])
            wire = sum(b for t, b in packets if e["time"] - 0.2 <= t <= until)
            assert e["bytes"] <= wire <= e["bytes"] * 1.02 + 64_000, (e["type"], e["round"], e["bytes"], wire)
        big = [e for e in sent if e["bytes"] > 100_000]
        ratio = sum(sum(b for t, b in packets if e["time"] - 0.2 <= t <= e["time"] + 1.0) for e in big) / sum(
            e["bytes"] for e in big)
        print(f"cleveland: {len(big)} updates sent, {ratio:.3f}x their logged bytes on the wire within 1 s")
        # and nothing big left unlogged: every second carrying over 100 KB up holds a logged update
        busy: dict[int, int] = {}
        for t, b in packets:
            busy[int(t)] = busy.get(int(t), 0) + b
        for second, total in busy.items():
            if total > 100_000:
                assert any(second - 2 <= e["time"] <= second + 1 for e in big), (second, total)
    # tampering with one entry is found
    text = log.read_text().splitlines()
    changed = json.loads(text[3])
    changed["bytes"] += 1
    text[3] = json.dumps(changed, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(text) + "\n")
    report = subprocess.run([sys.executable, "-m", "orchestrator.cli", "federation", "audit", "verify", "--state",
                             str(host("cleveland") / "node")], capture_output=True, text=True, env=env)
    assert report.returncode == 1 and "entry 3" in report.stderr and "changed" in report.stderr, report.stderr
    said = subprocess.run([sys.executable, "-m", "orchestrator.cli", "federation", "audit", "report",
                           run_b.info.run_id, "--state", str(host("cleveland") / "node")], capture_output=True,
                          text=True, env=env)
    assert said.returncode == 0 and "epsilon" in said.stdout and "k=5" in said.stdout, said.stdout + said.stderr
    print(said.stdout)
