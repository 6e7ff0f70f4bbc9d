"""A job's own round-end listener (`orchestrator.run(..., listeners=[...])`) sees every round end,
round 0 included, in every engine that runs the rounds in this process, and can stop the rounds."""
from __future__ import annotations

import pytest

from orchestrator import run
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self, stop_at: int | None = None):
        self.ends, self.stop_at = [], stop_at

    def round_end(self, end) -> None:
        self.ends.append((end.round, dict(end.metrics), len(end.arrays)))
        if end.round == self.stop_at:
            end.stop = True


@pytest.mark.parametrize("engine", ["inline", "vectorized", "simulation"])
def test_a_listener_sees_every_round_end_in_every_in_process_engine(engine, store):
    seen = Seen()
    result = run(CONFIGS / "hospitals_fedavg.yaml", [f"federated.engine={engine}", "federated.rounds=3",
                                                     f"tracking.uri={store}", "tracking.register_model=null",
                                                     "tracking.log_model=false"], listeners=[seen])
    assert [r for r, _, _ in seen.ends] == [0, 1, 2, 3]
    assert all(n > 0 for _, _, n in seen.ends)                         # the global model, every round
    assert "central/accuracy" in seen.ends[0][1] and "time/round_end_s" not in seen.ends[0][1]
    for r, metrics, _ in seen.ends[1:]:   # what the standard listeners added before this one
        assert {"central/accuracy", "time/round_end_s"} <= set(metrics), (r, metrics)
    assert seen.ends[-1][1]["central/accuracy"] == pytest.approx(result.final["central/accuracy"])


def test_a_listener_stops_the_rounds_after_the_round_it_asks(store):
    seen = Seen(stop_at=2)
    result = run(CONFIGS / "hospitals_fedavg.yaml", ["federated.engine=vectorized", "federated.rounds=5",
                                                     "tracking.enabled=false", "tracking.register_model=null"],
                 listeners=[seen])
    assert [r for r, _, _ in seen.ends] == [0, 1, 2]
    assert max(step for step, _ in result.history["central/accuracy"]) == 2
