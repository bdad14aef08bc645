"""The Flower strategy that aggregates the clients' weights (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi), wrapped in
Flower's server-side differential privacy when `strategy.privacy` asks, with what each round's privacy costs."""

from __future__ import annotations

from tuneforge.strategies.params import FedAvgMParams, FederatedParams, FedOptParams, FedProxParams


def _flower_strategy(aggregation, params: FederatedParams, clients: int, lr: float):
    """The Flower strategy that aggregates: FedAvg, FedAvgM (a server learning rate and momentum on the averaged
    update), FedProx (the proximal term is the clients' to add: Flower sends them its μ), FedAdam or FedYogi (a
    server-side optimizer over the averaged update)."""
    from flwr.serverapp import strategy as flower_strategies

    sampled = max(1, round(params.fraction * clients))
    least = min(params.min_clients or clients, clients)
    # under differential privacy every client weighs the same (what the privacy accounting assumes), and when
    # clients are drawn in proportion to their examples (weighting them again would count their size twice)
    by_examples = params.sampling == "examples"  # drawn by _configure_train: Flower takes every node it is shown
    common = {"fraction_train": 1.0 if by_examples else params.fraction,
              "fraction_evaluate": 1.0 if params.holdout else 0.0,
              "min_train_nodes": 1 if by_examples else min(sampled, least),
              "min_evaluate_nodes": least if params.holdout else 0, "min_available_nodes": 1 if by_examples else least,
              "weighted_by_key": "one" if params.privacy or by_examples else "num-examples"}
    name = params.aggregation.name
    if isinstance(aggregation, FedProxParams):
        inner = flower_strategies.FedProx(**common, proximal_mu=aggregation.mu)
    elif isinstance(aggregation, FedAvgMParams):
        inner = flower_strategies.FedAvgM(**common, server_learning_rate=aggregation.server_lr,
                                          server_momentum=aggregation.momentum)
    elif isinstance(aggregation, FedOptParams):
        opt = {"fedadam": flower_strategies.FedAdam, "fedyogi": flower_strategies.FedYogi}[name]
        # eta_l, the clients' learning rate, is only reported by Flower: the clients train at train.lr
        inner = opt(**common, eta=aggregation.eta, eta_l=lr, beta_1=aggregation.beta_1, beta_2=aggregation.beta_2,
                    tau=aggregation.tau)
    else:
        inner = flower_strategies.FedAvg(**common)
    return _private(inner, params, clients, sampled) if params.privacy else inner


def _private(inner, params: FederatedParams, clients: int, sampled: int):
    """Flower's server-side fixed clipping around the strategy: each update clipped, Gaussian noise on the sum,
    and Flower's RDP accountant for the (ε, δ) spent (for the FedAvg family; a server optimizer is not
    accounted)."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    privacy = params.privacy
    accountant = None
    if privacy.noise_multiplier > 0 and type(inner).aggregate_train is FedAvg.aggregate_train:
        accountant = RdpAccountant(PrivacyConfig(
            target_delta=privacy.delta, population_size=clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
    return DifferentialPrivacyServerSideFixedClipping(inner, privacy.noise_multiplier, privacy.clipping_norm, sampled,
                                                      accountant=accountant)


def _privacy_spent(strategy) -> dict:
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if not hasattr(strategy, "noise_multiplier"):
        return {}
    figures = {"noise_multiplier": strategy.noise_multiplier, "clipping_norm": strategy.clipping_norm}
    return figures | ({"epsilon": spent.epsilon, "delta": spent.delta} if spent is not None else {})
