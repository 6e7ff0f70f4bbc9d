"""Central differential privacy: Flower's server-side fixed clipping around FedAvg, with its RDP accountant.

The server clips every hospital's update (weights minus the global model) to `clipping_norm`,
averages them with equal weights, and adds Gaussian noise of std noise_multiplier * clipping_norm /
hospitals. Flower's accountant composes one Gaussian release per round; `epsilon()` is what has
been spent so far at the configured delta (logged per round as `dp/epsilon`).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from orchestrator.core.protocol import UNIFORM_WEIGHT   # every hospital counts once: the noise's sensitivity
from strategies.base import OBSERVING, ObservedStrategy, observed


def accountant(dp, num_clients: int):
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(PrivacyConfig(target_delta=dp.delta, population_size=num_clients,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def projected_epsilon(dp, num_clients: int, sampled: int, rounds: int) -> float:
    """The epsilon `rounds` releases will have spent (no sampling amplification is claimed)."""
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    acc = accountant(dp, num_clients)
    acc.compose(GaussianPrivacyEvent(noise_multiplier=dp.noise_multiplier, sample_size=sampled,
                                     population_size=num_clients), count=rounds)
    return float(acc.get_privacy_spent().epsilon)


def build(dp, *, num_clients: int, sampled: int, seed: int = 0, **fedavg_kwargs):
    """FedAvg inside Flower's server-side fixed clipping, observed like every strategy."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as _Flower

    return observed(_Flower, CentralDPRounds)(dp, num_clients=num_clients, sampled=sampled, seed=seed,
                                              **fedavg_kwargs)


class CentralDPRounds(ObservedStrategy):
    """Clipping and noise act on the trainable parameters only: buffers the server set itself (the
    input scaling agreed in the census) are no hospital's update and must not be noised."""

    NAME = "CentralDP"

    def __init__(self, dp, *, num_clients: int, sampled: int, seed: int = 0, **kwargs):
        from flwr.serverapp.strategy import FedAvg

        ours = {k: kwargs.pop(k) for k in OBSERVING if k in kwargs}   # the wrapper's; the rest is the inner FedAvg's
        inner = FedAvg(weighted_by_key=UNIFORM_WEIGHT, **kwargs)
        super().__init__(inner, dp.noise_multiplier, dp.clipping_norm, sampled,
                         accountant=accountant(dp, num_clients), num_clients=num_clients, **ours)
        self.seed = seed
        self._full = None

    def _trainable(self, record):
        from flwr.app import ArrayRecord

        keys = self.trainable if self.trainable is not None else list(record.keys())
        return ArrayRecord({k: record[k] for k in keys})

    def configure_train(self, server_round: int, arrays, config, grid):
        self._full = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.current_arrays = self._trainable(arrays)   # what updates are measured against
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable):
        replies = list(replies)
        for m in replies:
            if not m.has_error():
                m.content["arrays"] = self._trainable(m.content["arrays"])
        # Flower draws the noise from numpy's global generator: seed it per round, then put it back
        saved = np.random.get_state()
        np.random.seed([self.seed, self._round(server_round)])
        try:
            arrays, metrics = super().aggregate_train(server_round, replies)
        finally:
            np.random.set_state(saved)
        if arrays is None:
            return None, metrics
        from flwr.app import ArrayRecord

        merged = {k: (arrays[k] if k in arrays else v) for k, v in self._full.items()}
        return ArrayRecord(merged), metrics

    def epsilon(self) -> float:
        return float(self.privacy_spent().epsilon)

    def checkpoint_state(self):
        return {}

    def load_checkpoint_state(self, state) -> None:  # the accountant is replayed from the rounds done
        pass

    def replay(self, rounds_done: int, sampled: int, num_clients: int) -> None:
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        if rounds_done:
            self.accountant.compose(GaussianPrivacyEvent(noise_multiplier=self.noise_multiplier,
                                                         sample_size=sampled, population_size=num_clients),
                                    count=rounds_done)
