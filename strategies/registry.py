"""YAML `federated.strategy` -> strategy object. Flower's arithmetic, our observation mixin."""
from __future__ import annotations

from orchestrator.config import SERVER_LR_DEFAULT
from strategies.base import Listener, Sampler
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedmedian import FedMedian
from strategies.fedprox import FedProx
from strategies.fednova import FedNova
from strategies.fedyogi import FedYogi
from strategies.krum import Krum
from strategies.multi_krum import MultiKrum
from strategies.scaffold import Scaffold
from strategies.trimmed_mean import FedTrimmedAvg

STRATEGIES = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian, "trimmed_mean": FedTrimmedAvg, "krum": Krum, "multi_krum": MultiKrum,
    "scaffold": Scaffold, "fednova": FedNova,
}


def strategy_options(spec) -> dict:
    """Our YAML option names -> the keyword arguments of the Flower class."""
    name = spec.name
    if name == "fedprox":
        return {"proximal_mu": spec.mu}
    eta = spec.server_lr if spec.server_lr is not None else SERVER_LR_DEFAULT.get(name)
    if name in ("fedadam", "fedyogi"):
        return {"eta": eta, "tau": spec.tau, "beta_1": spec.beta1, "beta_2": spec.beta2}
    if name == "fedadagrad":
        return {"eta": eta, "tau": spec.tau}
    if name == "scaffold":
        return {"server_lr": eta}
    if name == "trimmed_mean":
        return {"beta": spec.beta}
    if name == "krum":
        return {"num_malicious_nodes": spec.f}
    if name == "multi_krum":
        return {"num_malicious_nodes": spec.f, "num_nodes_to_select": spec.select}
    return {}


def sample_size(num_clients: int, fraction: float, least: int) -> int:
    return min(num_clients, max(int(num_clients * fraction), least))


def build_strategy(spec, *, num_clients: int, fraction_fit: float, fraction_evaluate: float,
                   listener: Listener | None = None, seed: int = 0, nodes: list[int] | None = None,
                   min_fit: int | None = None, accept_failures: bool = True, dp=None):
    """`spec` is the job's `federated.strategy` section; `nodes` the hospitals' node ids in
    partition order (sampling is ours, seeded: Flower is told every offered hospital takes part)."""
    min_nodes = min(2, num_clients) if min_fit is None else min_fit
    sampler = Sampler(nodes if nodes is not None else list(range(num_clients)), seed, fraction_fit,
                      fraction_evaluate, min_nodes, min(min_nodes, num_clients))
    flower = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                  min_available_nodes=1)
    if dp is not None and dp.mode == "central":
        from strategies.central_dp import CentralDP

        strategy = CentralDP(dp, num_clients=num_clients, sampled=sample_size(num_clients, fraction_fit, min_nodes),
                             seed=seed, **flower)
    else:
        strategy = STRATEGIES[spec.name](**flower, **strategy_options(spec))
    if isinstance(strategy, Scaffold):
        strategy.num_clients = num_clients
    strategy.sampler = sampler
    strategy.listener = listener
    strategy.accept_failures = accept_failures
    return strategy
