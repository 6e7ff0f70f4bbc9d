"""The waits between a deployed round's messages: the SuperNode asks for messages every
CONSORTIUM_POLL_S while a run goes on and at Flower's pace when idle (`adapters.flower.poll_every`),
an object not there yet is asked for again soon (`prompt_object_pulls`), and the ServerApp collects
replies every federated.poll_interval_s (`jobs.federated.deployed.Prompt`)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import flwr.supernode.start_client_internal as node
import pytest
from flwr.supercore.inflatable import inflatable_utils as pulls

from orchestrator.adapters.flower import poll_every, prompt_object_pulls
from orchestrator.federation.supernode import POLL_ENV, poll_seconds
from orchestrator.jobs.federated.deployed import Prompt


@pytest.fixture
def slept(monkeypatch):
    out: list[float] = []
    monkeypatch.setattr(node, "time", node.time)   # restored after the test
    monkeypatch.setattr(node, "_pull_and_store_message", lambda *a, **k: None)
    monkeypatch.setattr(time, "sleep", out.append)
    return out


def test_an_idle_supernode_asks_at_flowers_pace_and_looks_for_replies_briefly(slept):
    poll_every(0.1, hot_s=60)
    node.time.sleep(3)      # an empty pull, no message yet: Flower's pace
    node.time.sleep(0.5)    # waiting for its ClientApp's reply: always brief
    assert slept == [3, 0.1]
    assert abs(node.time.monotonic() - time.monotonic()) < 1   # the rest of `time` as it was


def test_a_message_makes_the_supernode_brisk_until_the_run_has_been_quiet(slept, monkeypatch):
    got = iter([None, 42])
    monkeypatch.setattr(node, "_pull_and_store_message", lambda *a, **k: next(got))
    poll_every(0.1, hot_s=0.3)
    assert node._pull_and_store_message() is None
    node.time.sleep(3)
    assert node._pull_and_store_message() == 42   # a message of run 42
    node.time.sleep(3)
    node.time.sleep(3)
    assert slept == [3, 0.1, 0.1]
    t = time.monotonic()
    while time.monotonic() - t < 0.35:   # quiet for longer than hot_s
        pass
    node.time.sleep(3)
    assert slept[-1] == 3


def test_objects_not_there_yet_are_asked_for_again_soon(monkeypatch):
    for fn in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        monkeypatch.setitem(fn.__kwdefaults__, "initial_backoff", fn.__kwdefaults__["initial_backoff"])
    # Flower waits 1 s, then 2 s, ...
    prompt_object_pulls(0.02)
    assert pulls.pull_objects.__kwdefaults__["initial_backoff"] == 0.02
    assert pulls.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] == 0.02
    tries: list[float] = []

    def not_yet_then_there(object_id: str) -> bytes:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise pulls.ObjectUnavailableError(object_id)
        return b"x"

    t0 = time.monotonic()
    assert pulls.pull_objects(["a"], not_yet_then_there) == {"a": b"x"}
    assert len(tries) == 3 and time.monotonic() - t0 < 0.5   # Flower's own waits would be ~3 s


def test_the_supernodes_poll_interval_is_checked(monkeypatch):
    monkeypatch.setenv(POLL_ENV, "0.25")
    assert poll_seconds() == 0.25
    for bad in ("0", "soon", "60"):
        monkeypatch.setenv(POLL_ENV, bad)
        with pytest.raises(SystemExit, match=f"{POLL_ENV}='{bad}': expected seconds between 0.01 and 10"):
            poll_seconds()


def _empty(**metadata) -> SimpleNamespace:
    """A message without content (nothing to pack)."""
    return SimpleNamespace(metadata=SimpleNamespace(**metadata), has_content=lambda: False)


class _Grid:
    """Replies arrive over several pulls: ids 1..n, reply k to message k."""

    def __init__(self, arrivals: list[list[int]]):
        self.arrivals, self.pulls, self.other = arrivals, 0, "delegated"

    def push_messages(self, messages):
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        wanted = set(ids)
        got = self.arrivals[self.pulls] if self.pulls < len(self.arrivals) else []
        self.pulls += 1
        return [_empty(reply_to_message_id=str(k)) for k in got if str(k) in wanted]


def test_the_serverapp_collects_replies_as_they_come(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("orchestrator.jobs.federated.deployed.time.sleep", waits.append)
    grid = Prompt(_Grid([[2], [], [1, 3]]), poll_s=0.1)
    replies = grid.send_and_receive([_empty(message_id=str(k)) for k in (1, 2, 3)])
    assert [r.metadata.reply_to_message_id for r in replies] == ["2", "1", "3"]
    assert waits == [0.1, 0.1] and grid.other == "delegated"


def test_the_serverapp_stops_collecting_at_the_timeout(monkeypatch):
    grid = Prompt(_Grid([[1]]), poll_s=0.05)
    t0 = time.monotonic()
    replies = grid.send_and_receive([_empty(message_id=str(k)) for k in (1, 2)], timeout=0.3)
    assert [r.metadata.reply_to_message_id for r in replies] == ["1"]
    assert 0.25 < time.monotonic() - t0 < 2


def test_a_supernode_poll_interval_out_of_range_is_refused_naming_the_option(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "federation", "supernode", "--superlink",
                           "127.0.0.1:1", "--insecure", "--partition-id", "0", "--num-partitions", "1",
                           "--poll-s", "0"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "--poll-s" in proc.stderr and "between 0.01 and 10" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
