"""The update and aggregation arithmetic we write ourselves, against results worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from clients import updates as U
from strategies import arithmetic as A
from strategies.base import Sampler


def s(**kw):
    return {k: np.asarray(v, dtype=np.float32) for k, v in kw.items()}


def test_weighted_mean_weights_by_rows_and_keeps_integer_counters():
    out = A.weighted_mean([{**s(w=[1, 2]), "n": np.array(3)}, {**s(w=[3, 6]), "n": np.array(9)}], [1, 3])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])   # (1*1 + 3*3)/4, (1*2 + 3*6)/4
    assert out["n"] == 3 and out["w"].dtype == np.float32


def test_scaffold_client_control_is_the_mean_local_gradient():
    # c_i+ = c_i - c + (x - y) / sum(lr): 0.5 - 1 + (2 - 1.5) / 0.25 = 1.5
    out = A.scaffold_client_control(s(w=[0.5]), s(w=[1.0]), s(w=[2.0]), s(w=[1.5]), lr_sum=0.25)
    np.testing.assert_allclose(out["w"], [1.5])


def test_scaffold_server_moves_x_by_the_mean_update_and_c_by_the_sampled_share():
    x, c = s(w=[0.0, 1.0]), s(w=[1.0, 1.0])
    ys = [s(w=[1.0, 1.0]), s(w=[3.0, 5.0])]
    deltas = [s(w=[2.0, 0.0]), s(w=[4.0, 2.0])]
    new_x, new_c = A.scaffold_server(x, ys, deltas, c, weights=[1, 1], server_lr=0.5, num_clients=4)
    np.testing.assert_allclose(new_x["w"], [1.0, 2.0])       # 0 + .5*(2 - 0), 1 + .5*(3 - 1)
    np.testing.assert_allclose(new_c["w"], [2.5, 1.5])       # 1 + (2/4)*3, 1 + (2/4)*1


def test_scaffold_with_server_lr_one_and_no_control_change_is_fedavg():
    x, ys = s(w=[0.0]), [s(w=[1.0]), s(w=[4.0])]
    new_x, _ = A.scaffold_server(x, ys, [s(w=[0.0])] * 2, s(w=[0.0]), [1, 2], 1.0, 2)
    np.testing.assert_allclose(new_x["w"], A.weighted_mean(ys, [1, 2])["w"])


def test_fednova_norms_for_sgd_and_momentum():
    assert A.fednova_norm(5) == 5.0
    assert A.fednova_norm(2, momentum=0.5) == pytest.approx(2.5)   # (2 - .5 (1 - .25)/.5)/.5


def test_fednova_normalises_updates_by_local_steps():
    # d1 = (0 - -2)/2 = 1, d2 = (0 - -9)/3 = 3, tau_eff = .5*2 + .5*3 = 2.5: x = -2.5 * (.5 + 1.5) = -5
    out = A.fednova(s(w=[0.0]), [s(w=[-2.0]), s(w=[-9.0])], norms=[2, 3], weights=[1, 1])
    np.testing.assert_allclose(out["w"], [-5.0])
    fedavg = A.weighted_mean([s(w=[-2.0]), s(w=[-9.0])], [1, 1])["w"]
    assert fedavg[0] == pytest.approx(-5.5)  # FedAvg is pulled further by the hospital taking more steps


def test_fednova_with_equal_steps_is_fedavg():
    ys = [s(w=[1.0, -1.0]), s(w=[3.0, 2.0]), s(w=[0.5, 0.0])]
    out = A.fednova(s(w=[0.0, 0.0]), ys, norms=[4, 4, 4], weights=[10, 20, 30])
    np.testing.assert_allclose(out["w"], A.weighted_mean(ys, [10, 20, 30])["w"], rtol=1e-6)


def test_poisoned_updates_scale_or_flip_the_honest_one():
    x, y = s(w=[1.0]), s(w=[2.0])
    assert U.poison(x, y, "scale", 10)["w"][0] == pytest.approx(11.0)
    assert U.poison(x, y, "sign_flip", 10)["w"][0] == pytest.approx(-9.0)


def test_sampling_is_reproducible_from_the_seed_and_varies_by_round():
    nodes = list(range(100, 120))
    a, b = Sampler(nodes, seed=7, fraction_fit=0.25), Sampler(nodes, seed=7, fraction_fit=0.25)
    rounds = [a.choose(r, "train") for r in range(1, 6)]
    assert rounds == [b.choose(r, "train") for r in range(1, 6)]
    assert all(len(r) == 5 and set(r) <= set(nodes) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    assert Sampler(nodes, seed=8, fraction_fit=0.25).choose(1, "train") != rounds[0]
    assert a.choose(1, "evaluate") == nodes  # fraction_evaluate 1.0: everyone
    assert len(Sampler(nodes, seed=1, fraction_fit=0.01, min_fit=3).choose(1, "train")) == 3


def test_krum_keeps_the_update_closest_to_its_neighbours_and_never_an_outlier():
    honest = [np.full(4, v, dtype=np.float32) for v in (1.0, 1.2, 0.8, 1.3, 0.7)]
    outliers = [np.full(4, -50.0, dtype=np.float32), np.full(4, 80.0, dtype=np.float32)]
    updates = honest[:2] + outliers[:1] + honest[2:] + outliers[1:]
    chosen = A.krum_select(updates, f=2)
    assert chosen == [0]   # 1.0: the centre of the honest cluster
    assert all(i not in (2, 6) for i in A.krum_select(updates, f=2, select=5))


def test_krum_selection_is_the_same_in_any_arrival_order_and_ties_go_to_the_first_hospital():
    rng = np.random.default_rng(3)
    updates = [rng.normal(size=50).astype(np.float32) for _ in range(9)]
    chosen = {tuple(updates[i].tobytes() for i in A.krum_select(updates, f=2, select=3))}
    for perm in (rng.permutation(9) for _ in range(5)):
        shuffled = [updates[i] for i in perm]
        chosen.add(tuple(sorted((shuffled[i].tobytes() for i in A.krum_select(shuffled, f=2, select=3)),
                                key=lambda b: [u.tobytes() for u in updates].index(b))))
    assert len(chosen) == 1
    twins = [np.zeros(3), np.ones(3), np.ones(3), np.zeros(3)]   # 0/3 and 1/2 tie exactly
    assert A.krum_select(twins, f=0) == [0]


def test_krum_distances_survive_large_weights_that_cancel_in_float32():
    # ||x||^2 + ||y||^2 - 2 x.y in float32 loses differences of 1e-3 on weights near 1e4: the
    # difference-based float64 distance still ranks the tightest pair first
    base = np.full(1000, 1e4, dtype=np.float32)
    updates = [base + np.float32(d) for d in (0.0, 1e-3, 2e-3, 0.5, -0.5)]
    assert A.krum_select(updates, f=1) == [1]
