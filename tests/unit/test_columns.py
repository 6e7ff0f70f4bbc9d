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
