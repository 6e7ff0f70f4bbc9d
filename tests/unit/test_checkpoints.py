"""Round checkpoints do not pile up: a new run keeps the newest finished runs' folders and every
unfinished one (those are what `consortium resume` continues)."""
from __future__ import annotations

import os

from orchestrator.jobs.federated.checkpoints import FINISHED, mark_finished, prune_finished, save_round


def test_only_the_newest_finished_runs_folders_stay_and_unfinished_ones_are_kept(tmp_path):
    runs = []
    for i in range(6):
        d = tmp_path / f"run{i}"
        save_round(d, 1, {"w": [float(i)]}, {})
        runs.append(d)
    for i in (0, 1, 2, 4):   # run3 and run5 were interrupted
        mark_finished(runs[i])
        os.utime(runs[i] / FINISHED, (1000 + i, 1000 + i))
    gone = prune_finished(tmp_path, keep=2)
    assert sorted(d.name for d in gone) == ["run0", "run1"]
    assert sorted(d.name for d in tmp_path.iterdir()) == ["run2", "run3", "run4", "run5"]
    assert (runs[3] / "round_00001.npz").is_file() and not (runs[3] / FINISHED).exists()
    assert prune_finished(tmp_path / "none") == []


def test_a_finished_run_is_marked_by_the_federated_job(tmp_path, monkeypatch):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job
    from tests.conftest import CONFIGS

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    job = load_job(CONFIGS / "hospitals_fedavg.yaml", ["tracking.enabled=false", "tracking.register_model=null",
                                                       "explain.enabled=false", "federated.rounds=2",
                                                       "federated.engine=vectorized"])
    run_job(job)
    folders = list((tmp_path / "federated").iterdir())
    assert len(folders) == 1 and (folders[0] / FINISHED).is_file() and (folders[0] / "round_00002.npz").is_file()
