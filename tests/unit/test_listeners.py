"""Each round-end listener alone, on a stand-in for the job's server side."""
from __future__ import annotations

from types import SimpleNamespace

from orchestrator.jobs.federated import listeners
from orchestrator.jobs.federated.listeners import RoundEnd
from orchestrator.tracking.memory import MemoryRun


def _rounds(**kw):
    return SimpleNamespace(**{"run": MemoryRun(), "first_round_s": None, "first_round_at": None, "strategy": None,
                              "best": None, **kw})


def test_timing_marks_every_trained_round_and_remembers_the_first():
    rounds = _rounds()
    timing = listeners.Timing(rounds)
    census, first, second = RoundEnd(0, 2, [], True), RoundEnd(1, 2, [], True), RoundEnd(2, 2, [], True)
    for end in (census, first, second):
        timing.round_end(end)
    assert "time/round_end_s" not in census.metrics
    assert 0 <= first.metrics["time/round_end_s"] <= second.metrics["time/round_end_s"]
    assert rounds.first_round_s == first.metrics["time/round_end_s"]


def test_privacy_spend_is_logged_only_for_a_strategy_with_an_accountant():
    rounds = _rounds()
    end = RoundEnd(1, 2, [], True)
    listeners.PrivacySpend(rounds).round_end(end)
    rounds.strategy = SimpleNamespace(epsilon=lambda: None)   # a strategy without an accountant
    listeners.PrivacySpend(rounds).round_end(end)
    assert "dp/epsilon" not in end.metrics
    rounds.strategy = SimpleNamespace(epsilon=lambda: 1.5)
    listeners.PrivacySpend(rounds).round_end(end)
    assert end.metrics["dp/epsilon"] == 1.5


def test_log_metrics_records_the_round_at_its_step():
    rounds = _rounds()
    listeners.LogMetrics(rounds).round_end(RoundEnd(3, 5, [], True, {"central/accuracy": 0.9}))
    assert rounds.run.history(["central/accuracy"]) == {"central/accuracy": [(3, 0.9)]}


def test_early_stopping_asks_to_stop_when_the_rule_says_so_on_an_evaluated_round():
    asked = []
    rounds = _rounds(best=SimpleNamespace(see=lambda r, last, arrays: asked.append(r) or r >= 2))
    stopping = listeners.EarlyStopping(rounds)
    ends = [RoundEnd(r, 5, [], evaluated=r != 3) for r in (0, 1, 2, 3)]
    for end in ends:
        stopping.round_end(end)
    assert asked == [1, 2] and [e.stop for e in ends] == [False, False, True, False]


def test_report_passes_pooled_metrics_without_per_hospital_ones():
    rounds = _rounds()
    rounds.run.log_metrics({"eval/accuracy": 0.8, "hospital_1/eval/accuracy": 0.7}, 1)
    got = []
    listeners.Report(rounds, lambda r, m: got.append((r, m))).round_end(RoundEnd(1, 2, [], True))
    assert got == [(1, {"eval/accuracy": 0.8})]
