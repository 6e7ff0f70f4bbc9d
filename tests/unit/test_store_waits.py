"""A store call waits for a store that is away (a tracking server restarting) and gives up at
once on a call the store refuses: `tracking.stores.patient`."""
from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException

from orchestrator.tracking import stores


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(stores.time, "sleep", slept.append)
    return slept


def _away() -> Exception:
    try:
        raise requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded")
    except requests.ConnectionError as cause:
        try:
            raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed") from cause
        except MlflowException as exc:
            return exc


def test_unreachable_tells_a_store_that_is_away_from_a_refused_call():
    assert stores.unreachable(_away())
    assert stores.unreachable(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not stores.unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found"))
    assert not stores.unreachable(PermissionError("artifact folder is read-only"))


def test_a_call_waits_for_the_store_to_come_back(no_sleep):
    calls = []

    def call(x):
        calls.append(x)
        if len(calls) <= 6:   # away for six tries (more than the quick retries allow)
            raise _away()
        return x * 2

    assert stores.patient(call, 21, within=600) == 42
    assert len(calls) == 7 and len(no_sleep) == 6


def test_a_store_away_past_the_wait_raises_its_error(no_sleep):
    def call():
        raise _away()

    with pytest.raises(MlflowException, match="runs/get"):
        stores.patient(call, within=0)


def test_a_refused_call_is_retried_a_few_times_only(no_sleep):
    calls = []

    def call():
        calls.append(1)
        raise MlflowException("INVALID_PARAMETER_VALUE: bad key")

    with pytest.raises(MlflowException, match="bad key"):
        stores.patient(call, within=600)
    assert len(calls) == 5 and sum(no_sleep) < 5
