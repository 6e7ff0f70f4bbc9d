"""core.stacked: K hospitals trained together equal K runs of the per-hospital loop (train_epochs),
for every optimizer, unequal hospital sizes (one with no rows), proximal term, clipping, correction."""
from __future__ import annotations

import pytest
import torch

from orchestrator.core.models import build_model
from orchestrator.core.stacked import Block, train_stacked
from orchestrator.core.training import Objective, train_epochs
from orchestrator.spec.model import ModelSpec
from orchestrator.spec.train import TrainSpec

SIZES = [37, 5, 0, 64, 1]


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in SIZES]


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adam", "lr": 0.01, "weight_decay": 0.01}, {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
    {"name": "rmsprop", "lr": 0.01}, {"name": "rmsprop", "lr": 0.01, "momentum": 0.5},
])
@pytest.mark.parametrize("extras", [{}, {"proximal_mu": 0.5}, {"clip": 0.1}, {"correction": True}])
def test_stacked_training_equals_each_hospital_trained_alone(optimizer, extras):
    spec = TrainSpec.model_validate({"optimizer": optimizer, "batch_size": 8, "epochs": 3,
                                     "grad_clip": extras.get("clip"), "schedule": {"name": "step", "step_size": 1}})
    torch.manual_seed(1)
    model = build_model(ModelSpec(name="mlp", hidden=[16]), 6, 3)
    objective = Objective("softmax", "cross_entropy", 3, weights=[1.0, 2.0, 0.5])
    data, seeds = _data(), [11 * k + 3 for k in range(len(SIZES))]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(2)
    correction = {n: 0.1 * torch.randn(len(SIZES), *p.shape, generator=g) for n, p in model.named_parameters()} \
        if extras.get("correction") else None
    mu = extras.get("proximal_mu", 0.0)
    together = train_stacked(model, Block.of(data), spec, 3, seeds, objective, epoch_offset=2, total_epochs=9,
                             proximal_mu=mu, correction=correction)
    for k, (X, y) in enumerate(data):
        alone = build_model(ModelSpec(name="mlp", hidden=[16]), 6, 3)
        alone.load_state_dict(model.state_dict())
        stats: dict = {}
        corr = [correction[n][k] for n in trainable] if correction else None
        loss = train_epochs(alone, X, y, spec, 3, seed=seeds[k], proximal_mu=mu, objective=objective,
                            epoch_offset=2, total_epochs=9, correction=corr, stats=stats)
        assert together.steps[k] == stats.get("steps", 0)
        assert together.lr_sums[k] == pytest.approx(stats.get("lr_sum", 0.0))
        assert together.losses[k] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        for n, p in alone.named_parameters():
            assert torch.allclose(together.params[n][k], p.detach(), rtol=1e-4, atol=1e-5), (k, n)


@pytest.mark.parametrize("model_spec, head, batched", [
    ({"name": "mlp", "hidden": [16, 8], "activation": "tanh", "freeze": ["body.0"]}, "softmax", True),
    ({"name": "logistic"}, "softmax", True),
    ({"name": "mlp", "hidden": [8], "head": "linear"}, "linear", True),
    ({"name": "mlp", "hidden": [8], "head": "sigmoid"}, "sigmoid", True),
    ({"name": "cnn", "channels": [4]}, "softmax", False),   # a vmap of functional_call
])
def test_both_forward_paths_equal_each_hospital_trained_alone(model_spec, head, batched):
    """The MLP family runs one batched matmul per layer (frozen layers shared), other families a
    vmap of the module: both give each hospital what it gets alone, proximal term included."""
    from orchestrator.core.stacked import _batchable

    classes = 3 if head == "softmax" else 2
    loss = {"softmax": "cross_entropy", "sigmoid": "bce", "linear": "mse"}[head]
    spec = TrainSpec.model_validate({"optimizer": {"name": "adam", "lr": 0.01}, "batch_size": 8, "epochs": 2})
    torch.manual_seed(1)
    mspec = ModelSpec.model_validate(model_spec)
    model = build_model(mspec, 16, classes)
    assert _batchable(model) is batched
    objective = Objective(head, loss, classes, target_scale=2.0 if head == "linear" else 1.0)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, 16, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in SIZES]
    if head == "linear":
        data = [(X, X[:, 0] * 3 + 1) for X, _ in data]
    seeds = [7 * k + 1 for k in range(len(SIZES))]
    together = train_stacked(model, Block.of(data), spec, 2, seeds, objective, proximal_mu=0.3)
    for k, (X, y) in enumerate(data):
        alone = build_model(mspec, 16, classes)
        alone.load_state_dict(model.state_dict())
        got = train_epochs(alone, X, y, spec, 2, seed=seeds[k], proximal_mu=0.3, objective=objective)
        assert together.losses[k] == pytest.approx(got, rel=1e-5, abs=1e-6)
        for n, p in alone.named_parameters():
            if p.requires_grad:
                assert torch.allclose(together.params[n][k], p.detach(), rtol=1e-4, atol=1e-5), (k, n)
            else:
                assert n not in together.params


def test_a_reply_record_is_byte_for_byte_what_flower_makes():
    """`protocol.from_state` (the .npy header made once per dtype and shape) against Flower's own
    ArrayRecord: the same bytes, dtype, shape and type for tensors, numpy arrays, 0-d, empty and
    non-contiguous ones, and the same values back."""
    import numpy as np
    from flwr.app import ArrayRecord

    from orchestrator.core import protocol as P

    state = {"w": torch.randn(64, 2), "b": torch.zeros(2), "step": torch.tensor(3.0),
             "counts": np.arange(6, dtype=np.int64).reshape(2, 3), "none": np.zeros((0, 4), np.float32),
             "t": np.arange(12.0).reshape(3, 4).T, "mask": torch.ones(3, dtype=torch.bool)}
    for _ in range(2):   # the second time from the header cache
        ours = P.from_state(state)
        flower = ArrayRecord({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                              for k, v in state.items()})
        assert list(ours) == list(flower)
        for k, v in state.items():
            fields = ("dtype", "shape", "stype", "data")
            assert [getattr(ours[k], f) for f in fields] == [getattr(flower[k], f) for f in fields], k
            assert ours[k] == flower[k] and flower[k] == ours[k], k
            back = ours[k].numpy()   # read without np.load's header parser
            assert back.dtype == np.asarray(v).dtype and back.shape == np.asarray(v).shape, k
            assert np.array_equal(back, np.asarray(v)) and back.flags.writeable, k
        assert ours.object_id == flower.object_id   # deflated as Flower's own Array
    for k, v in state.items():   # replaced data is read by np.load, as Flower reads it
        ours[k].data = flower["w"].data
        assert np.array_equal(ours[k].numpy(), state["w"].numpy()), k


def test_a_reply_record_leaves_the_process_as_flowers_own():
    """Pickled (Ray), deflated and inflated (the deployment engine): the same record comes back."""
    import pickle

    import numpy as np
    from flwr.app import ArrayRecord
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from orchestrator.core import protocol as P

    ours = P.from_state({"w": torch.randn(4, 3), "b": np.arange(3, dtype=np.int32)})
    assert pickle.loads(pickle.dumps(ours)) == ours
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(ours).items()}
    back = inflate_object_from_contents(ours.object_id, contents)
    assert type(back) is ArrayRecord and back == ours
    assert all(np.array_equal(back[k].numpy(), ours[k].numpy()) for k in ours)


@pytest.mark.parametrize("head, loss, classes, weights", [
    ("softmax", "cross_entropy", 3, [1.0, 2.0, 0.5]), ("softmax", "cross_entropy", 2, None),
    ("sigmoid", "bce", 2, [0.3, 1.0]), ("linear", "mse", 1, None),
])
def test_hospitals_scored_together_equal_each_scored_alone(head, loss, classes, weights):
    """The vectorized engine's evaluation: every hospital's loss and metrics, and the sums the server
    pools, from one pass over all their rows, equal `scored` and the counts of each one's own
    (one hospital has no test rows, one a single class: AUROC undefined)."""
    import math

    import numpy as np

    from orchestrator.core import metrics as M
    from orchestrator.core.stacked import scored_stacked
    from orchestrator.core.training import confusion_of, scored

    objective = Objective(head, loss, classes, weights=weights)
    g = torch.Generator().manual_seed(3)
    sizes = [9, 0, 4, 17, 1]
    outs = [torch.randn(n, 1 if head != "softmax" else classes, generator=g) for n in sizes]
    ys = [torch.randn(n, generator=g) if head == "linear" else torch.randint(0, max(classes, 2), (n,), generator=g)
          for n in sizes]
    ys[2] = ys[2] * 0 if head != "linear" else ys[2]
    together = scored_stacked(torch.cat(outs), torch.cat(ys), sizes, objective)
    for (res, summed), out, y in zip(together, outs, ys):
        alone = scored(out, y, objective)
        assert res.keys() == alone.keys()
        for k, v in alone.items():
            assert (math.isnan(v) and math.isnan(res[k])) or res[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        if head == "linear":
            assert np.allclose(summed, M.regression_sums(y.numpy(), out[:, 0].numpy()))
        else:
            assert np.array_equal(summed, confusion_of(out, y, max(classes, 2), objective))


def test_the_update_rules_constants_are_still_torchs_defaults():
    """core.stacked writes torch's update rules per hospital with the constants core.training names:
    they must stay torch's defaults, or the stacked optimizers and torch's would drift apart."""
    import inspect

    from orchestrator.core import training as T

    adam = inspect.signature(torch.optim.Adam).parameters
    rmsprop = inspect.signature(torch.optim.RMSprop).parameters
    assert (T.ADAM_BETAS, T.ADAM_EPS) == (adam["betas"].default, adam["eps"].default)
    assert (T.RMSPROP_ALPHA, T.RMSPROP_EPS) == (rmsprop["alpha"].default, rmsprop["eps"].default)
