"""Federated depth: every strategy, attacks, failures, sampling, privacy, secure aggregation, resume, scale.

Most runs use the inline engine (the same ClientApp and Flower strategies, hospitals called in this
process), which reproduces the simulation engine exactly (first test) at a fraction of the start-up;
what depends on Ray actors (crashing hospitals, SecAgg+ end to end, SCAFFOLD state kept in actors)
runs in Flower's simulation engine. Every run is tracked in a real SQLite MLflow store.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration

QUICK = ["tracking.log_model=false", "tracking.register_model=null", "explain.enabled=false"]


def run(store, *overrides, config="hospitals_fedavg.yaml", engine="inline"):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    job = load_job(CONFIGS / config, [f"tracking.uri={store}", f"federated.engine={engine}", *QUICK, *overrides])
    return run_job(job)


def scores(final: dict) -> dict:
    """The metrics a run scores (not its timings, nor the bytes it sent: those follow the job's spec text)."""
    return {k: v for k, v in final.items() if not k.startswith(("time/", "comm/"))}


def history(store, run_id, key) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(store).get_metric_history(run_id, key)}


def test_inline_engine_reproduces_the_simulation_engine(fedavg_run, store):
    inline = run(store).final
    simulated = fedavg_run["result"].final
    for key in ("eval/accuracy", "eval/loss", "central/accuracy", "central/loss", "train/loss"):
        assert inline[key] == simulated[key], key


def _drill(module) -> list[str]:
    """Overrides for a strategy's convergence drill: its module's CONVERGENCE_DRILL (the options it
    is meant to run with, and a partition where the method's guarantee holds), else Dirichlet(0.5)."""
    drill = getattr(module, "CONVERGENCE_DRILL", {})
    name = module.Options.model_fields["name"].default
    return [f"federated.strategy.name={name}", *[f"federated.strategy.{k}={v}" for k, v in drill.get("options", {}).items()],
            *([f"federated.partition.name={drill['partition']}"] if "partition" in drill else [])]


from strategies.registry import STRATEGIES  # noqa: E402


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_converges_on_the_breast_cancer_hospitals(name, store):
    result = run(store, *_drill(STRATEGIES[name]), "federated.rounds=10")
    run_ = MlflowClient(store).get_run(result.run_id)
    assert run_.info.status == "FINISHED" and run_.data.tags["strategy"] == name
    acc = history(store, result.run_id, "central/accuracy")
    assert acc[10] >= 0.85 and acc[10] > acc[0], acc   # round 0: the initial model


def test_fedprox_with_mu_zero_is_fedavg(store):
    fedavg = run(store, "federated.rounds=5").final
    prox = run(store, "federated.rounds=5", "federated.strategy.name=fedprox", "federated.strategy.mu=0").final
    assert scores(prox) == scores(fedavg)


ROBUST = ["fedmedian", "trimmed_mean", "krum", "multi_krum"]   # strategies built to resist bad updates


@pytest.mark.parametrize("attack", ["sign_flip, factor: 10", "scale, factor: 1000"], ids=["sign_flip", "scale"])
def test_robust_strategies_keep_accuracy_under_attack_while_fedavg_degrades(attack, store):
    drill = [f"federated.attack={{kind: {attack}, hospitals: [2, 7]}}", "federated.partition.name=iid",
             "federated.rounds=10", "tracking.enabled=false"]   # accuracies only: metrics kept in memory
    fedavg = run(store, *drill).final["central/accuracy"]
    clean = run(store, *drill[1:], "federated.attack=null").final["central/accuracy"]
    assert clean >= 0.9 and fedavg < 0.8, (clean, fedavg)
    for name in ROBUST:   # IID hospitals: whichever honest hospitals Krum keeps, their models agree
        acc = run(store, *drill, *_drill(STRATEGIES[name])).final["central/accuracy"]
        assert acc >= 0.88, (name, acc)


def test_two_of_ten_hospitals_crash_in_some_rounds_and_the_run_finishes(store):
    result = run(store, "federated.faults={hospitals: [3, 7], rounds: [2, 3]}", "federated.rounds=4",
                 engine="simulation")
    run_ = MlflowClient(store).get_run(result.run_id)
    assert run_.info.status == "FINISHED"
    assert history(store, result.run_id, "train/failures") == {1: 0, 2: 2, 3: 2, 4: 0}
    assert history(store, result.run_id, "train/hospitals") == {1: 10, 2: 8, 3: 8, 4: 10}
    assert result.final["central/accuracy"] >= 0.85


def test_evaluating_every_third_round_thins_the_evaluations_and_leaves_training_as_it_was(store):
    every = run(store, "federated.rounds=7", "federated.num_clients=4")
    thinned = run(store, "federated.rounds=7", "federated.num_clients=4", "federated.evaluate_every=3")
    assert sorted(history(store, thinned.run_id, "eval/accuracy")) == [3, 6, 7]  # and always the last round
    assert sorted(history(store, thinned.run_id, "central/accuracy")) == [0, 3, 6, 7]
    assert sorted(history(store, thinned.run_id, "train/loss")) == list(range(1, 8))
    # evaluation changes nothing of training: the same model, the same final scores
    assert history(store, thinned.run_id, "train/loss") == history(store, every.run_id, "train/loss")
    assert scores(thinned.final) == scores(every.final)


def test_a_failure_stops_the_run_when_failures_are_not_accepted(store):
    from strategies.base import HospitalFailedError

    with pytest.raises(HospitalFailedError, match="round 2 .* 1 hospital"):
        run(store, "federated.faults={hospitals: [3], rounds: [2]}", "federated.rounds=3",
            "federated.accept_failures=false")
    client = MlflowClient(store)
    (failed,) = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])
    assert failed.info.status == "FAILED" and history(store, failed.info.run_id, "train/failures") == {1: 0, 2: 1}


def _participants(store, run_id, rounds):
    keys = [k for k in MlflowClient(store).get_run(run_id).data.metrics if k.endswith("/train/num_examples")]
    return [sorted(k.split("/")[0] for k in keys if r in history(store, run_id, k)) for r in range(1, rounds + 1)]


def test_client_sampling_is_reproducible_from_the_seed(store):
    a = run(store, "federated.fraction_fit=0.3", "federated.rounds=4")
    b = run(store, "federated.fraction_fit=0.3", "federated.rounds=4")
    c = run(store, "federated.fraction_fit=0.3", "federated.rounds=4", "seed=7")
    pa, pb, pc = (_participants(store, r.run_id, 4) for r in (a, b, c))
    assert all(len(p) == 3 for p in pa) and len({tuple(p) for p in pa}) > 1
    assert pa == pb and scores(a.final) == scores(b.final)
    assert pc != pa


def test_central_dp_logs_the_epsilon_spent_every_round(store):
    from orchestrator.spec.federated import DPSpec
    from strategies.central_dp import projected_epsilon

    result = run(store, "federated.dp={mode: central, noise_multiplier: 2.0, clipping_norm: 1.0}",
                 "federated.partition.name=iid", "federated.rounds=6")
    eps = history(store, result.run_id, "dp/epsilon")
    assert sorted(eps) == [1, 2, 3, 4, 5, 6] and all(eps[r] < eps[r + 1] for r in range(1, 6))
    dp = DPSpec(noise_multiplier=2.0)
    assert eps[6] == pytest.approx(projected_epsilon(dp, 10, 10, 6), rel=1e-9)
    assert eps[3] == pytest.approx(projected_epsilon(dp, 10, 10, 3), rel=1e-9)
    assert result.final["central/accuracy"] >= 0.8
    # the same seed draws the same noise: a DP run is reproducible too
    again = run(store, "federated.dp={mode: central, noise_multiplier: 2.0, clipping_norm: 1.0}",
                "federated.partition.name=iid", "federated.rounds=6")
    assert again.final["central/loss"] == result.final["central/loss"]


def test_local_dp_sgd_logs_each_hospitals_epsilon(store):
    from clients.privacy import epsilon

    result = run(store, "federated.dp={mode: local, noise_multiplier: 1.0, clipping_norm: 1.0}",
                 "federated.partition.name=iid", "federated.rounds=4")
    eps = history(store, result.run_id, "dp/epsilon")
    assert sorted(eps) == [1, 2, 3, 4] and all(eps[r] < eps[r + 1] for r in range(1, 4))
    rows = [v for k, v in MlflowClient(store).get_run(result.run_id).data.metrics.items()
            if k.endswith("/train/num_examples")]
    assert eps[4] == pytest.approx(max(epsilon(1.0, int(n), 32, 1, 4, 1e-5) for n in rows), rel=1e-9)
    assert result.final["central/accuracy"] > 0.6


def test_secure_aggregation_in_simulation_matches_plain_fedavg(store):
    plain = run(store, "federated.rounds=3")
    secure = run(store, "federated.rounds=3", "federated.secagg={enabled: true}", engine="simulation")
    assert MlflowClient(store).get_run(secure.run_id).info.status == "FINISHED"
    for key in ("central/loss", "eval/loss", "train/loss"):
        assert secure.final[key] == pytest.approx(plain.final[key], abs=1e-4), key
    assert secure.final["central/accuracy"] == plain.final["central/accuracy"]
    # SecAgg+'s stochastic rounding is seeded per (seed, round, hospital): the same seed repeats
    # exactly, in either engine
    inline = run(store, "federated.rounds=3", "federated.secagg={enabled: true}")
    assert scores(inline.final) == scores(secure.final)


def test_no_raw_training_row_ever_leaves_a_hospital(store, monkeypatch):
    """Every reply every hospital sends is inspected for any of its raw training rows."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    from orchestrator.jobs.federated.inline import InlineGrid

    sent = []
    deliver = InlineGrid._deliver

    def spy(self, msg):
        reply = deliver(self, msg)
        sent.append(reply)
        return reply

    monkeypatch.setattr(InlineGrid, "_deliver", spy)
    run(store, "federated.rounds=2", "federated.num_clients=4", "federated.strategy.name=scaffold")

    def payload(message) -> bytes:
        parts = []
        for record in message.content.values():
            if isinstance(record, ArrayRecord):
                parts += [np.ascontiguousarray(a.numpy(), dtype=np.float32).tobytes() for a in record.values()]
            elif isinstance(record, (ConfigRecord, MetricRecord)):
                nums = [v for val in record.values() for v in (val if isinstance(val, list) else [val])
                        if isinstance(v, (int, float))]
                parts.append(np.asarray(nums, dtype=np.float32).tobytes())
        return b"".join(parts)

    from clients.hospitals import hospital_share
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.plan import plan_data

    job = load_job(CONFIGS / "hospitals_fedavg.yaml", ["federated.num_clients=4"])
    schema = plan_data(job).schema
    rows = [np.asarray(hospital_share(job, schema, i, 4)[1].X_train, dtype=np.float32) for i in range(4)]
    assert len(sent) == 4 + 4 * 2 * 2   # census + (train + evaluate) x 2 rounds, 4 hospitals
    blob = b"|".join(payload(m) for m in sent)
    leaked = [i for X in rows for i, row in enumerate(X) if row.tobytes() in blob or row[:5].tobytes() in blob]
    assert leaked == []
    # the check can fail: a reply carrying one row is caught
    assert rows[0][3].tobytes() in blob + np.asarray(rows[0][3], dtype=np.float32).tobytes()


def test_an_interrupted_fedadam_run_resumes_with_its_server_moments(store, monkeypatch):
    """Ctrl-C once round 3 is checkpointed (run KILLED), resume into the same run: Adam's moments come
    back from the round checkpoint, so the result equals an uninterrupted run's exactly."""
    import _thread

    from orchestrator.jobs.federated import listeners as federated_job  # where rounds are checkpointed
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.lifecycle import Resume
    from orchestrator.jobs.runner import run_job

    args = ["federated.strategy.name=fedadam", "federated.rounds=8"]
    save = federated_job.save_round

    def save_then_stop(directory, server_round, model_state, strategy_state):
        save(directory, server_round, model_state, strategy_state)
        assert set(strategy_state) == {"m_t", "v_t"}
        if server_round == 3:
            _thread.interrupt_main()  # checkpoints are written on a thread: Ctrl-C reaches the main one

    monkeypatch.setattr(federated_job, "save_round", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(store, *args)
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])
    assert killed.info.status == "KILLED" and 3 <= max(history(store, killed.info.run_id, "central/loss")) < 8
    monkeypatch.setattr(federated_job, "save_round", save)

    job = load_job(CONFIGS / "hospitals_fedavg.yaml", [f"tracking.uri={store}", "federated.engine=inline", *QUICK, *args])
    resumed = run_job(job, Resume(killed.info.run_id))
    assert resumed.run_id == killed.info.run_id and client.get_run(resumed.run_id).info.status == "FINISHED"
    assert sorted(history(store, resumed.run_id, "central/loss")) == list(range(0, 9))
    assert scores(resumed.final) == scores(run(store, *args).final)


@pytest.mark.parametrize("method", ["ditto", "fedper"])
def test_an_interrupted_personalized_run_resumes_with_each_hospitals_own_part(store, monkeypatch, method):
    """Each hospital's personal state (ditto's model, fedper's head) is kept on its side per round:
    a run stopped after round 3 and resumed in a new grid (no Flower Context left) ends with the
    personal metrics of an uninterrupted run, exactly."""
    import _thread

    from orchestrator.jobs.federated import listeners as federated_job
    from orchestrator.jobs.lifecycle import Resume
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    args = [f"federated.personalize.method={method}", "federated.rounds=6", "federated.num_clients=4"]
    save = federated_job.save_round

    def save_then_stop(directory, server_round, model_state, strategy_state):
        save(directory, server_round, model_state, strategy_state)
        if server_round == 3:
            _thread.interrupt_main()

    monkeypatch.setattr(federated_job, "save_round", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(store, *args)
    monkeypatch.setattr(federated_job, "save_round", save)
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])
    assert killed.info.status == "KILLED"
    job = load_job(CONFIGS / "hospitals_fedavg.yaml", [f"tracking.uri={store}", "federated.engine=inline", *QUICK, *args])
    resumed = run_job(job, Resume(killed.info.run_id))
    assert sorted(history(store, resumed.run_id, "personal/accuracy")) == list(range(1, 7))
    plain = run(store, *args).final
    for key in ("personal/accuracy", "personal/loss", "personal_site_mean/accuracy", "eval/loss"):
        assert resumed.final[key] == plain[key], key


def test_a_killed_scaffold_run_resumes_into_the_same_run_and_ends_as_if_never_interrupted(tmp_path, monkeypatch):
    """SIGKILL mid-run (nothing can be saved on the way out), then `consortium resume RUN_ID`: the
    global model and server control variate come from the round checkpoint, each hospital's own
    control variate from the state it keeps."""
    strategy = "scaffold"
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [*QUICK, "federated.engine=inline", f"federated.strategy.name={strategy}", "federated.rounds=15"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(CONFIGS / "hospitals_fedavg.yaml"),
                             *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / ".consortium" / "federated"
    deadline = time.monotonic() + 240

    def saved() -> int:   # only the last two rounds' checkpoints are kept: look for any from round 3 on
        return max((int(p.stem.split("_")[1]) for p in ckpts.glob("*/round_*.npz")), default=0)

    while saved() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run_dir,) = list(ckpts.iterdir())
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    # the tracking process outlives the job and may be creating the store's tables right now (the
    # rounds do not wait for MLflow): take the lock it creates them under, as our own processes do
    from orchestrator.tracking.stores import store_lock

    with store_lock(store):
        client = MlflowClient(store)
    # the job's tracking process saw it die: it writes what it was sent and ends the run KILLED
    deadline, found = time.monotonic() + 60, []
    while time.monotonic() < deadline and not (found and found[0].info.status != "RUNNING"):
        time.sleep(0.2)
        experiment = client.get_experiment_by_name("consortium")
        found = client.search_runs([experiment.experiment_id]) if experiment else []
    (found,) = found
    run_id = found.info.run_id
    assert found.info.status == "KILLED"
    assert found.data.tags["federated.checkpoints"] == str(run_dir)
    done = max(history(store, run_id, "central/loss"))
    assert 3 <= done < 15

    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", run_id, "--json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert sorted(history(store, run_id, "central/loss")) == list(range(0, 16))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path / "again"))
    uninterrupted = run(f"sqlite:///{tmp_path / 'again.db'}", *args).final   # in this process: same code
    for key in ("central/loss", "central/accuracy", "eval/loss", "train/loss"):
        assert resumed["final"][key] == uninterrupted[key], key


def test_shards_partition_logs_each_hospitals_labels(store):
    result = run(store, "federated.partition.name=shards", "federated.partition.labels_per_hospital=1",
                 "federated.rounds=2")
    client = MlflowClient(store)
    table = client.download_artifacts(result.run_id, "partition/hospitals.json")
    hospitals = json.loads(open(table).read())["hospitals"]
    assert len(hospitals) == 10
    assert all(sum(1 for n in h["train_rows_by_label"].values() if n > 0) == 1 for h in hospitals)
    assert "plots/partition.png" in [a.path for a in client.list_artifacts(result.run_id, "plots")]


def test_a_thousand_hospitals_sampled_at_five_percent(store):
    import resource

    t0 = time.perf_counter()
    result = run(store, "federated.num_clients=1000", "federated.fraction_fit=0.05", "federated.fraction_evaluate=0.05",
                 "federated.partition.name=iid", "federated.rounds=3", "data.source=xor", "data.rows=15000")
    wall = time.perf_counter() - t0
    assert history(store, result.run_id, "train/hospitals") == {1: 50, 2: 50, 3: 50}
    ends = sorted(history(store, result.run_id, "time/round_end_s").items())
    per_round = (ends[-1][1] - ends[0][1]) / (len(ends) - 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n1000 hospitals (inline): {per_round:.2f} s/round, wall {wall:.1f} s, peak RSS {peak:.0f} MB")


def test_compressed_updates_cost_the_bytes_promised_and_train_alike_in_both_in_process_engines(tmp_path):
    """The main job's updates 8-bit and top-10% (error feedback on): the hospitals send the bytes the
    codec promises (comm/bytes_up, the whole reply: >= 3.5x and >= 5x fewer), what goes down is the
    same, the model still learns, and the inline and vectorized engines compress alike."""
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    def run(*overrides):
        job = load_job(CONFIGS / "hospitals_fedavg.yaml", [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                                                           "tracking.register_model=null", "federated.rounds=8",
                                                           *overrides])
        return run_job(job).final

    plain, int8, topk = run(), run("federated.compression={method: int8}"), run("federated.compression={method: topk}")
    assert plain["comm/bytes_up"] / int8["comm/bytes_up"] >= 3.5
    assert plain["comm/bytes_up"] / topk["comm/bytes_up"] >= 5.0
    assert abs(int8["comm/bytes_down"] - plain["comm/bytes_down"]) < 1000   # the global model goes down whole
    for compressed in (int8, topk):
        assert compressed["eval/accuracy"] >= plain["eval/accuracy"] - 0.03
    inline = run("federated.compression={method: int8}", "federated.engine=inline")
    for k, v in int8.items():
        if not k.startswith("time/") and not k.endswith("bytes_down"):   # the job sent down names its engine
            assert inline[k] == pytest.approx(v, abs=1e-6), k
