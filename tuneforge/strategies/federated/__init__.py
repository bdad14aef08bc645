"""`strategy: federated`: federated fine-tuning on Flower. Clients train the method's trainable weights (the
adapter) on their own data for `local_steps` each round; the server aggregates only those weights with one of
Flower's strategies (FedAvg, FedProx, FedAdam, FedYogi) and never reads a client's data.

Flower is the engine: the server is a `ServerApp` whose rounds call the Flower strategy's own
`configure_train` / `aggregate_train` / `configure_evaluate`, so tuneforge can checkpoint each aggregated
round and report it; a client is a `ClientApp` that trains through the engine's pieces (`engine.session`,
`train_loop`), FedProx's proximal term entering as the loop's `penalty`. By default the federation runs in
Flower's simulation on this machine (`run_simulation`: each client a Ray actor with its own copy of the model,
built once per actor).

Who reads what: the server process reads the config, the model and `data.test` (the global model's test set).
A client reads `data.train` and takes its own share (`split: iid | dirichlet`, the same seeded split in every
client), or its own file (`client_data`); it keeps `holdout` of it to score the global model on its own data.

The run directory: `rounds/step-0000000N/` holds the aggregated weights after round N (and a server optimizer's
state), written atomically; `metrics.jsonl` a row per round (each client's held-out score, the global model's,
bytes exchanged, wall time); a resume starts after the last aggregated round."""

from __future__ import annotations

from tuneforge.config import LoadedConfig
from tuneforge.engine import checkpoint
from tuneforge.engine.console import RunConsole, format_scores
from tuneforge.engine.session import make_evaluator, open_session
from tuneforge.errors import ConfigError
from tuneforge.runs.identity import fingerprint_of
from tuneforge.runs.layout import ROUNDS
from tuneforge.runs.recipe import read_recipe
from tuneforge.runs.run import Run, RunResult
from tuneforge.strategies.base import Strategy
from tuneforge.strategies.federated.aggregation import _flower_strategy
from tuneforge.strategies.federated.client import _client_names, check_split, client_app
from tuneforge.strategies.federated.server import _exchange_bytes, _last_round, _mib, _Server, _server_data, _simulate
from tuneforge.strategies.params import FederatedParams

# The package: this module is the strategy; `server` runs the rounds inside Flower's ServerApp, `aggregation` builds
# Flower's strategy (with differential privacy), `client` is the ClientApp (local training through the engine),
# `deploy` the apps a real SuperLink and SuperNodes run (`strategies/flower_app`).


def run(loaded: LoadedConfig, params: FederatedParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False, grid=None) -> RunResult:
    """The federation, in Flower's simulation; or, given the `grid` of a deployed ServerApp (`server_app`, run by
    a SuperLink), with the SuperNodes connected to it."""
    _require_flower(loaded.where("strategy"))
    cfg = loaded.run
    console = RunConsole(quiet=quiet)
    recipe = read_recipe(loaded)
    aggregation = params.chosen(loaded.where("strategy"))
    names = _client_names(params)
    if grid is None and not params.client_data:  # simulated clients share data.train: can it be split?
        check_split(loaded, params)
    with Run.open(loaded, console, resume=resume, force=force, checkpoints=ROUNDS) as run:
        server_data = _server_data(loaded, recipe)
        run.identify(fingerprint_of(cfg, server_data))  # the config and tokenizer: the data are the clients'
        with run.guard("loading the model"):
            session = open_session(loaded, recipe, console)
        evaluate = make_evaluator(session, server_data, cfg)
        adapter_bytes, full_bytes = _exchange_bytes(session.model)
        run.start(server_data.tokenizer, clients=names, **session.summary())
        strategy = _flower_strategy(aggregation, params, len(names), cfg.train.lr)
        weights = checkpoint.trainable_state(session.model)
        done, weights = _last_round(run.dir, strategy, list(weights)) if run.resuming else (0, weights)
        console.info(f"federated: {len(names)} clients, {params.rounds} rounds of {params.local_steps} local steps, "
                     f"{aggregation.__class__.__name__.removesuffix('Params')}; each round exchanges "
                     f"{_mib(adapter_bytes)} per client each way ({100 * adapter_bytes / full_bytes:.2f}% of the "
                     f"full model's {_mib(full_bytes)})" + (f"; resuming after round {done}" if done else ""))
        with run.logging(done if run.resuming else None):
            exchanged = (adapter_bytes, full_bytes)
            server = _Server(run, params, strategy, session, evaluate, names, exchanged, weights, done)
            if grid is None:
                _simulate(server, client_app(lambda context: (loaded, params)), len(names))
            else:
                server.main(grid, None)
            if server.error is not None:
                raise server.error
            checkpoint.restore_trainable(session.model, server.weights, "the last aggregated round")
            run.save(session.model, recipe)
            after, samples = run.score(evaluate, params.rounds)
            console.info("after: " + format_scores(after))
            return run.complete({"rounds": params.rounds, "wall_s": run.wall_s(), "bytes_exchanged": server.bytes_total,
                                 "missing": server.missing}, after, samples, steps=params.rounds * params.local_steps,
                                record=server.roster())


def _require_flower(where: str) -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError(f"{where}: strategy federated runs on Flower, which is not installed\n  fix: pip install "
                          "'tuneforge[federated]'") from None


STRATEGY = Strategy("federated", "clients train the adapter on their own data; Flower aggregates the weights "
                    "(FedAvg, FedAvgM, FedProx, FedAdam, FedYogi)", FederatedParams, run, needs_train_data=False)
