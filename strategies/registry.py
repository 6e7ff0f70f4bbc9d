"""YAML `federated.strategy` -> strategy object. Flower's arithmetic, our observation mixin."""
from __future__ import annotations

from strategies.base import Listener
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedmedian import FedMedian
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.krum import Krum
from strategies.multi_krum import MultiKrum
from strategies.trimmed_mean import FedTrimmedAvg

STRATEGIES = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian, "trimmed_mean": FedTrimmedAvg, "krum": Krum, "multi_krum": MultiKrum,
}


def strategy_options(spec) -> dict:
    """Our YAML option names -> the keyword arguments of the Flower class."""
    name = spec.name
    if name == "fedprox":
        return {"proximal_mu": spec.mu}
    if name in ("fedadam", "fedyogi"):
        return {"eta": spec.server_lr, "tau": spec.tau, "beta_1": spec.beta1, "beta_2": spec.beta2}
    if name == "fedadagrad":
        return {"eta": spec.server_lr, "tau": spec.tau}
    if name == "trimmed_mean":
        return {"beta": spec.beta}
    if name == "krum":
        return {"num_malicious_nodes": spec.f}
    if name == "multi_krum":
        return {"num_malicious_nodes": spec.f, "num_nodes_to_select": spec.select}
    return {}


def build_strategy(spec, *, num_clients: int, fraction_fit: float, fraction_evaluate: float,
                   listener: Listener | None = None):
    """`spec` is the job's `federated.strategy` section."""
    min_nodes = min(2, num_clients)
    strategy = STRATEGIES[spec.name](
        fraction_train=fraction_fit,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=num_clients,
        **strategy_options(spec),
    )
    strategy.listener = listener
    return strategy
