"""Data: bundled sets match scikit-learn, splits are stratified, imputation never pools hospitals."""
from __future__ import annotations

import numpy as np
import pytest

from clients.hospitals import hospital_share
from orchestrator.core.data import Split, load_bundled
from orchestrator.core.splits import impute_split, split_indices
from orchestrator.spec.errors import DataError
from orchestrator.spec.loading import load_job
from orchestrator.jobs.plan import plan_data


@pytest.mark.parametrize("name", ["breast_cancer", "digits", "wine"])
def test_bundled_data_equals_scikit_learns_loader(name):
    from sklearn import datasets

    table, schema = load_bundled(name)
    bunch = getattr(datasets, f"load_{name}")()
    np.testing.assert_allclose(table.X, bunch.data.astype(np.float32))
    np.testing.assert_array_equal(table.y, bunch.target)
    assert list(schema.features) == [str(f) for f in bunch.feature_names]
    assert list(schema.classes) == [str(c) for c in bunch.target_names]


def test_split_is_stratified_and_disjoint():
    y = np.array([0] * 80 + [1] * 20)
    train, test = split_indices(y, 0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    assert y[test].sum() == 5 and len(test) == 25


def test_imputation_uses_training_rows_only():
    X_train = np.array([[1.0, np.nan], [3.0, 10.0], [100.0, 20.0]], dtype=np.float32)
    X_test = np.array([[np.nan, np.nan]], dtype=np.float32)
    out = impute_split(Split(X_train, np.zeros(3), X_test, np.zeros(1)), "median")
    np.testing.assert_allclose(out.X_test, [[3.0, 15.0]])
    np.testing.assert_allclose(out.X_train[0], [1.0, 15.0])
    assert out.notes["imputed_cells"] == 3


def test_each_hospital_imputes_from_its_own_rows(tmp_path):
    # Two hospitals whose observed values differ wildly: a pooled median would leak across them.
    (tmp_path / "sites").mkdir()
    a = "x,target\n" + "".join(f"{1 + i % 3},{i % 2}\n" for i in range(20)) + ",0\n,1\n"
    b = "x,target\n" + "".join(f"{1000 + i % 3},{i % 2}\n" for i in range(20)) + ",0\n,1\n"
    (tmp_path / "sites/a.csv").write_text(a)
    (tmp_path / "sites/b.csv").write_text(b)
    job = load_job(_write_job(tmp_path, f"data: {{source: csv, path: {tmp_path}/sites, test_fraction: 0.5}}\n"
                              "federated: {num_clients: null, partition: {name: natural, min_size: 4}}\n"))
    plan = plan_data(job)
    assert plan.hospitals == ["a", "b"]
    from clients.handlers import Hospital

    for pid, expected in [(0, 2.0), (1, 1001.0)]:
        name, raw = hospital_share(job, plan.schema, pid, 2)
        h = Hospital(job, plan.schema, pid, name, raw)
        X, _, Xt, _ = h.tensors(np.zeros(1, dtype=np.float32))
        filled = np.concatenate([X.numpy()[np.isnan(raw.X_train)], Xt.numpy()[np.isnan(raw.X_test)]])
        assert len(filled) == 2 and np.all(filled == expected), (name, filled)


def test_a_csv_hospital_with_too_few_rows_is_named(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites/big.csv").write_text("x,target\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
    (tmp_path / "sites/small.csv").write_text("x,target\n1,0\n2,1\n")
    job = load_job(_write_job(tmp_path, f"data: {{source: csv, path: {tmp_path}/sites}}\n"
                              "federated: {num_clients: null, partition: {name: natural}}\n"))
    with pytest.raises(DataError, match="small.csv: 2 rows"):
        plan_data(job)


def test_labels_are_encoded_the_same_in_every_hospital(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites/a.csv").write_text("x,dx\n" + "".join(f"{i},{'sick' if i % 2 else 'well'}\n" for i in range(20)))
    (tmp_path / "sites/b.csv").write_text("x,dx\n" + "".join(f"{i},well\n" for i in range(20)))
    job = load_job(_write_job(tmp_path, f"data: {{source: csv, path: {tmp_path}/sites, target: dx}}\n"
                              "federated: {num_clients: null, partition: {name: natural}}\n"))
    plan = plan_data(job)
    assert plan.schema.classes == ("sick", "well")
    _, b = hospital_share(job, plan.schema, 1, 2)
    assert set(b.y_train.tolist()) == {1}


def _write_job(tmp_path, body: str):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\nkind: federated\n" + body)
    return path
