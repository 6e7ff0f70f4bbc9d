"""Column kinds and the agreed vocabulary of text columns."""
from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.core.columns import agree_vocabulary, category_counts, encode, encoded_names, kind_of


def test_kinds():
    n = 50
    assert kind_of(pd.Series(np.arange(n) * 1.5), "weight")[0] == "number"
    assert kind_of(pd.Series(np.arange(n)), "patient_id")[0] == "identifier"
    assert kind_of(pd.Series([f"A{i}" for i in range(n)]), "code")[0] == "identifier"
    assert kind_of(pd.Series(pd.date_range("2021-01-01", periods=n).strftime("%d/%m/%Y")), "seen")[0] == "date"
    assert kind_of(pd.Series(["yes", "no"] * 25), "smoker")[0] == "category"
    assert kind_of(pd.Series(np.arange(n)), "age")[0] == "number"   # unique per row but not named like an id


def test_the_vocabulary_is_the_most_frequent_values_summed_over_hospitals_and_the_rest_is_other():
    a = category_counts(pd.DataFrame({"c": ["x"] * 5 + ["y"] * 2 + ["rare"]}), ["c"])
    b = category_counts(pd.DataFrame({"c": ["y"] * 4 + ["z"] * 3}), ["c"])
    assert a == {"c": {"x": 5, "y": 2, "rare": 1}}
    vocab = agree_vocabulary([a, b], max_categories=3)
    assert vocab == {"c": ("x", "y", "z")}
    assert encoded_names(["age", "c"], vocab) == ["age", "c=x", "c=y", "c=z", "c=other"]
    X = encode(pd.DataFrame({"age": [1.0, None], "c": ["rare", None]}), ["age", "c"], vocab)
    assert X[0].tolist() == [1, 0, 0, 0, 1] and np.isnan(X[1, 0]) and X[1, 1:].sum() == 0


def test_a_numeric_identifier_is_refused_like_a_text_one():
    import pandas as pd

    from orchestrator.core.columns import kind_of

    pid = pd.Series(range(1001, 1101))                     # a trial export's PID: one integer per row
    assert kind_of(pid, "PID")[0] == "identifier"
    assert kind_of(pid.sample(frac=1, random_state=0), "PatientId")[0] == "identifier"
    rng = np.random.default_rng(0)
    spaced = pd.Series(rng.choice(np.arange(20, 2000), 100, replace=False))
    assert kind_of(spaced, "cholesterol")[0] == "number"   # unique integers, but not counting rows
    assert kind_of(spaced, "lipid")[0] == "number"         # a name ending in 'id' is not an identifier


def test_rows_without_a_label_are_an_error_or_left_out_and_counted(tmp_path):
    import pandas as pd

    from orchestrator.core.csvfiles import read_frame
    from orchestrator.spec.data import DataSpec
    from orchestrator.spec.errors import DataError

    path = tmp_path / "site.csv"
    df = pd.DataFrame({"age": np.arange(30) % 7 + 40.0, "y": ["a", "b", None] * 10})
    df.to_csv(path, index=False)
    import pytest

    with pytest.raises(DataError, match=r"10 empty cells \(lines \[4, 7, 10, 13, 16\]\).*missing_labels: drop"):
        read_frame(path, DataSpec(source="csv", path=str(path), target="y"))
    kept = read_frame(path, DataSpec.model_validate({"source": "csv", "path": str(path), "target": "y",
                                                     "missing_labels": "drop"}))
    assert len(kept) == 20 and kept.attrs["dropped_unlabelled"] == 10


def test_the_run_counts_the_unlabelled_rows_left_out_at_each_hospital(tmp_path):
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_raw

    for site, missing in (("north", 3), ("south", 0)):
        y = np.array(["a", "b"] * 20, dtype=object)
        y[:missing] = None
        pd.DataFrame({"age": np.arange(40) % 9 + 30.0, "y": y}).to_csv(tmp_path / f"{site}.csv", index=False)
    job = load_raw({"name": "t", "kind": "federated",
                    "data": {"source": "csv", "path": str(tmp_path), "target": "y", "missing_labels": "drop"},
                    "federated": {"num_clients": None, "partition": {"name": "natural"}}}, "t")
    plan = plan_data(job)
    assert plan.hospital_sizes == [37, 40]
    assert plan.notes["data.dropped_unlabelled"] == 3
    assert plan.notes["data.dropped_unlabelled_by_hospital"] == "north: 3, south: 0"
