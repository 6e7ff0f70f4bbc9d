"""The hospital's own controls, piece by piece: its policy file, the checks a job meets, the k filter
on what is counted, the privacy ledger's composition and the audit log's chain."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.conftest import CONFIGS


def _job(*overrides: str):
    from orchestrator.spec.loading import load_job

    return load_job(CONFIGS / "heart_disease_sites.yaml", list(overrides))


def _policy(**raw):
    from orchestrator.spec.policy import SitePolicy

    return SitePolicy.model_validate(raw)


def test_a_policy_file_with_a_typo_names_the_file_and_the_key(tmp_path):
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text("privacy: {epsilon_budjet: 2.0}\nmin_count: 0\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    text = str(err.value)
    assert str(path) in text and "privacy.epsilon_budjet" in text and "min_count" in text
    path.write_text("privacy: {epsilon_budget: 2.0}\nmin_count: 5\n")
    assert load_policy(path).privacy.epsilon_budget == 2.0
    assert load_policy(path).digest() != _policy().digest()   # the server records the digest, not the content


@pytest.mark.parametrize("policy, overrides, expected", [
    ({"allow": {"strategies": ["fedavg"]}}, ["federated.strategy.name=fedprox"], "strategy fedprox is not allowed"),
    ({"allow": {"models": ["cnn"]}}, [], "model family mlp is not allowed"),
    ({"allow": {"kinds": ["local"]}}, [], "job kind federated is not allowed"),
    ({"allow": {"max_rounds": 10}}, ["federated.rounds=11"], "11 rounds is more than its policy's 10"),
    ({"privacy": {"dp": "required"}}, [], "requires differential privacy"),
    ({"privacy": {"dp": "local"}}, ["federated.dp.mode=central"], "requires local DP (federated.dp.mode: central)"),
    ({"share": {"personal_models": False}}, ["federated.personalize.method=finetune",
                                              "federated.personalize.share_models=true"], "keeps personal models"),
    ({"allow": {"strategies": ["fedavg"]}, "privacy": {"dp": "local"}},
     ["federated.dp.mode=local"], None),
])
def test_what_a_policy_forbids_is_named_in_words(policy, overrides, expected):
    from clients.site import forbidden

    found = forbidden(_policy(**policy), _job(*overrides))
    assert (found is None) if expected is None else (expected in found), found


def test_the_ledger_composes_runs_with_rdp_and_survives_being_reopened(tmp_path):
    from clients.ledger import Ledger, Release, epsilon

    one = Release(1.2, 0.1, 20)
    book = Ledger(tmp_path / "ledger.db")
    for r in (1, 2):
        book.record("ward-a", "run-1", "job", "local", r, one)
    book.record("ward-a", "trial-2", "job", "local", 1, one)
    book.record("ward-b", "run-9", "job", "central", 1, Release(2.0, 1.0, 1))
    book.close()
    book = Ledger(tmp_path / "ledger.db")   # a restarted hospital reads what was committed
    assert book.rounds("ward-a", "run-1") == {1, 2}
    run1, trial2 = epsilon(book.releases("ward-a", "run-1"), 1e-5), epsilon(book.releases("ward-a", "trial-2"), 1e-5)
    total = epsilon(book.releases("ward-a"), 1e-5)
    assert total == pytest.approx(epsilon([one] * 3, 1e-5))     # three rounds, whichever runs they were in
    assert max(run1, trial2) < total < run1 + trial2             # RDP composes tighter than adding epsilons
    assert {(r["dataset"], r["run"], r["rounds"]) for r in book.summary()} == {
        ("ward-a", "run-1", 2), ("ward-a", "trial-2", 1), ("ward-b", "run-9", 1)}
    assert epsilon(book.releases("ward-b"), 1e-5) > 0 and epsilon([], 1e-5) == 0.0
    # the same number Opacus' accountant gives for the whole history, entry by entry
    from opacus.accountants import RDPAccountant

    history = [one, one, Release(2.0, 1.0, 1), Release(0.8, 0.05, 7), one]
    acc = RDPAccountant()
    acc.history = [(r.noise, r.rate, r.steps) for r in history]
    assert epsilon(history, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def _log(tmp_path, n=6):
    from clients import audit

    log = tmp_path / "audit.jsonl"
    for i in range(n):
        audit.append(log, {"run": "r", "round": i, "direction": "in" if i % 2 == 0 else "out", "type": "train",
                           "bytes": 100 + i, "sha256": f"{i:064x}"})
    return log


def test_the_audit_chain_finds_an_entry_changed_removed_reordered_or_cut_off(tmp_path):
    from clients import audit

    log = _log(tmp_path)
    assert audit.verify(log) == (6, [])
    lines = log.read_text().splitlines()

    def broken(new_lines):
        log.write_text("\n".join(new_lines) + "\n")
        return " ".join(audit.verify(log)[1])

    entry = json.loads(lines[2])
    entry["bytes"] = 1
    assert "entry 2" in broken([*lines[:2], json.dumps(entry), *lines[3:]]) and "changed" in broken(
        [*lines[:2], json.dumps(entry), *lines[3:]])
    assert "removed" in broken([*lines[:2], *lines[3:]])
    assert "reordered" in broken([lines[0], lines[2], lines[1], *lines[3:]])
    assert "cut off" in broken(lines[:4])
    assert audit.verify(tmp_path / "nowhere.jsonl")[1]


def test_the_audit_report_says_what_left_in_one_run(tmp_path):
    from clients import audit

    log = tmp_path / "audit.jsonl"
    audit.append(log, {"run": "r1", "flower_run": 7, "round": 1, "direction": "in", "type": "train", "bytes": 5000,
                       "sha256": "a" * 64, "hospital": "riverside", "policy": "abc", "job": "heart"})
    audit.append(log, {"run": "r1", "flower_run": 7, "round": 1, "direction": "out", "type": "train", "bytes": 4000,
                       "sha256": "b" * 64, "hospital": "riverside", "policy": "abc", "job": "heart", "k": 5,
                       "what": ["arrays: 6 arrays, 540 numbers"],
                       "epsilon": {"run": 0.8, "total": 1.9, "delta": 1e-5, "dataset": "/data/ward.csv", "budget": 2.0}})
    audit.append(log, {"run": "r2", "round": 1, "direction": "out", "type": "train", "bytes": 84, "sha256": "c" * 64,
                       "refused": "hospital riverside refuses: epsilon 0.8 for this run would pass its budget 2"})
    text = audit.report(log, "r1")
    assert "hospital riverside" in text and "6 arrays, 540 numbers" in text and "3.9 KB" in text
    assert "epsilon 0.8 spent in this run" in text and "1.9 after it of its budget 2" in text and "k=5" in text
    assert "REFUSED" in audit.report(log, "r2") and "no entry of run r3" in audit.report(log, "r3")


def _reply(content, kind="query"):
    return SimpleNamespace(content=content, metadata=SimpleNamespace(message_type=kind))


def _site(k):
    from clients.site import Site

    return Site(folder=None, name="riverside", dataset="d", policy=_policy(min_count=k))


def test_k_merges_a_rare_category_into_other_and_withholds_small_counts_in_what_is_sent(tmp_path):
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from clients.hospitals import describe_share
    from clients.counts import withhold
    from clients.site import Refused
    from orchestrator.core import protocol as P

    rows = (CONFIGS / "data" / "heart_disease" / "cleveland.csv").read_text().splitlines()
    csv = tmp_path / "cleveland.csv"
    csv.write_text("\n".join([rows[0] + ",referral", *(r + ("," + ("pilot" if i < 3 else "gp"))
                                                       for i, r in enumerate(rows[1:]))]) + "\n")
    job = _job(f"data.path={tmp_path}")
    described = describe_share(job, 0, 1, str(csv))
    assert described["categories"]["referral"]["pilot"] == 3   # without k, the rare value would be named
    content = RecordDict({P.DESCRIPTION: ConfigRecord({"description": json.dumps(described)})})
    site = _site(5)
    withhold(site, _reply(content))
    sent = json.loads(str(content[P.DESCRIPTION]["description"]))
    assert "pilot" not in json.dumps(sent) and sent["categories"]["referral"]["other"] == 3
    assert "1 category values merged" in site.notes[0]

    census = RecordDict({P.STATS: ArrayRecord([np.array([3.0, 40.0]), np.array([6.0, 80.0]), np.array([13.0, 170.0])]),
                         P.LABELS: ConfigRecord({"train": [2, 38]}),
                         P.METRICS: MetricRecord({P.NUM_EXAMPLES: 40})})
    withhold(_site(5), _reply(census))
    assert list(census[P.LABELS]["train"]) == [0, 38]
    stats = census[P.STATS].to_numpy_ndarrays()
    assert stats[0].tolist() == [0.0, 40.0] and stats[1].tolist() == [0.0, 80.0]
    small = RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: 3})})
    with pytest.raises(Refused, match="its test split holds 3 rows, fewer than its policy's k=5"):
        withhold(_site(5), _reply(small, "evaluate"))
    withhold(_site(1), _reply(small, "evaluate"))   # k = 1: nothing withheld


def test_the_vectorized_engine_is_refused_where_hospitals_keep_site_records():
    from orchestrator.spec.errors import ConfigError

    with pytest.raises(ConfigError, match="site policy, ledger and audit log"):
        _job("federated.sites=sites", "federated.engine=vectorized")


def test_a_supernode_refuses_a_bad_policy_and_a_superlink_whose_certificate_it_does_not_pin(tmp_path):
    """Before Flower starts: a policy with a mistake names the file and key (exit 2); a pinned
    SuperLink fingerprint that differs from the certificate the server presents refuses to join."""
    import socket
    import ssl
    import subprocess
    import sys
    import threading

    import typer

    from orchestrator.cli.federation import _trusted
    from orchestrator.federation.certs import make_certs
    from orchestrator.federation.flower import certificate_sha256

    bad = tmp_path / "policy.yaml"
    bad.write_text("min_count: 5\nallow: {strategy: [fedavg]}\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "federation", "supernode", "--superlink",
                           "127.0.0.1:1", "--insecure", "--partition-id", "0", "--num-partitions", "1", "--policy",
                           str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "allow.strategy" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    certs = make_certs(tmp_path / "certs", ["127.0.0.1"], [])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.cert, certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def serve():
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                server.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        real = certificate_sha256(address, certs.ca)
        good = _policy(trust={"superlink_sha256": ":".join(real[i:i + 2] for i in range(0, 64, 2)).upper()})
        assert _trusted(good, bad, address, certs.ca) is None
        with pytest.raises(typer.Exit):
            _trusted(_policy(trust={"superlink_sha256": "ab" * 32}), bad, address, certs.ca)
    finally:
        listener.close()
