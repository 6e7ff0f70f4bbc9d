"""Fewer bytes per update: each codec's round trip, error feedback's promise, and where it is refused."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CONFIGS


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {"layer.weight": rng.normal(size=(64, 30)).astype(np.float32), "layer.bias": rng.normal(size=64).astype(np.float32),
            "out.weight": rng.normal(size=(2, 64)).astype(np.float32), "norm.steps": np.array(7, np.int64)}


def _trained(start, seed=1, scale=0.01):
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape).astype(np.float32)) if v.dtype == np.float32 else v + 1
            for k, v in start.items()}


@pytest.mark.parametrize("method, tolerance, ratio", [
    ("float16", 1e-4, 1.99), ("bfloat16", 1e-3, 1.99), ("int8", 3e-4, 3.9), ("topk", None, 5.0)])
def test_each_codec_decodes_what_it_encoded_at_the_bytes_it_promises(method, tolerance, ratio):
    from orchestrator.core.compression import compress_update, decompress_update

    start = _model()
    trained = _trained(start)
    sent, _ = compress_update(start, trained, method, 0.1, None)
    back = decompress_update(sent, start)
    assert back["norm.steps"] == trained["norm.steps"] and back["layer.weight"].dtype == np.float32
    full = sum(np.asarray(v).nbytes for v in trained.values())
    assert full / sum(a.nbytes for a in sent.values()) >= ratio
    if tolerance is not None:
        for k in ("layer.weight", "layer.bias", "out.weight"):
            assert np.abs(back[k] - trained[k]).max() <= tolerance, k
    else:   # top-k: the largest tenth of each tensor's update is exact (to float16), the rest is zero
        update = trained["layer.weight"] - start["layer.weight"]
        got = back["layer.weight"] - start["layer.weight"]
        kept = got != 0
        assert kept.sum() == int(np.ceil(0.1 * update.size))
        assert np.abs(update[kept]).min() >= np.abs(update[~kept]).max()
        assert np.allclose(got[kept], update[kept], atol=1e-4)


def test_error_feedback_loses_nothing_for_good_only_late():
    """Summed over rounds, what the server decoded plus what the hospital still holds is exactly
    what it meant to send; without feedback, top-k loses most of it."""
    from orchestrator.core.compression import compress_update, decode

    start = _model()
    meant = np.zeros_like(start["layer.weight"])
    got_ef, got_plain = np.zeros_like(meant), np.zeros_like(meant)
    residual: dict = {}
    for r in range(20):
        trained = _trained(start, seed=r + 10)
        meant += trained["layer.weight"] - start["layer.weight"]
        sent, residual = compress_update(start, trained, "topk", 0.1, residual)
        got_ef += decode(sent, start)["layer.weight"]
        plain, _ = compress_update(start, trained, "topk", 0.1, None)
        got_plain += decode(plain, start)["layer.weight"]
    assert np.allclose(got_ef + residual["layer.weight"], meant, atol=1e-3)
    assert np.linalg.norm(got_ef - meant) < 0.5 * np.linalg.norm(got_plain - meant)


def test_an_update_for_another_model_is_refused():
    from orchestrator.core.compression import compress_update, decode

    sent, _ = compress_update(_model(), _trained(_model()), "int8", 0.1, None)
    small = {"layer.weight": np.zeros((2, 2), np.float32), "norm.steps": np.array(1)}
    with pytest.raises(ValueError, match="another model"):
        decode(sent, small)


@pytest.mark.parametrize("overrides, expected", [
    (["federated.secagg={enabled: true}"], r"SecAgg\+ quantizes"),
    (["federated.dp={mode: central}"], "central DP clips"),
])
def test_compression_is_refused_where_it_cannot_combine(overrides, expected):
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError, match=expected):
        load_job(CONFIGS / "hospitals_fedavg.yaml", ["federated.compression={method: int8}", *overrides])
