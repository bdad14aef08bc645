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

import logging
import os
import random
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from tuneforge.config import DatasetSpec, LoadedConfig
from tuneforge.data.dataset import encode_examples
from tuneforge.data.kinds import read_splits
from tuneforge.data.partition import split_clients
from tuneforge.data.render import use_chat_template
from tuneforge.engine import checkpoint
from tuneforge.engine.console import Metrics, RunConsole, format_scores
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.optim import lr_at
from tuneforge.engine.session import Prepared, Recipe, first_per_task, loop_inputs, make_evaluator, open_session
from tuneforge.errors import ConfigError, TrainingError, TuneforgeError
from tuneforge.models.load import load_tokenizer
from tuneforge.runs.identity import fingerprint_of
from tuneforge.runs.layout import CHECKPOINTS, ROUNDS, read_json
from tuneforge.runs.recipe import read_recipe
from tuneforge.runs.run import Run, RunResult
from tuneforge.strategies.base import Strategy, validate_strategy_params
from tuneforge.strategies.params import FedAvgMParams, FederatedParams, FedOptParams, FedProxParams
from tuneforge.strategies.penalties import l2sp


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
                                 "missing": server.missing}, after, samples, steps=params.rounds * params.local_steps)


# ----------------------------------------------------------------------------------------------- the server


class _Server:
    """The rounds, run inside Flower's `ServerApp`: each sends the global weights to the sampled clients,
    aggregates their answers with the Flower strategy, has the clients score it on their held-out data, scores
    it on `data.test`, logs the round and checkpoints it."""

    def __init__(self, run: Run, params, strategy, session, evaluate, names, exchanged: tuple[int, int], weights,
                 done: int):
        self.run, self.loaded, self.console, self.run_dir = run, run.loaded, run.console, run.dir
        self.params, self.strategy, self.session, self.evaluate, self.names = params, strategy, session, evaluate, names
        self.adapter_bytes, self.full_bytes = exchanged
        self.weights, self.done = weights, done
        self.error: BaseException | None = None
        self.bytes_total, self.missing = 0, {}
        self.nodes: dict[int, str] = {}
        self.examples: dict[str, int] = {}  # client -> its training examples, for sampling: examples
        self.destinations: dict[str, int] = {}  # message id -> the node it was sent to

    def main(self, grid, context) -> None:
        try:
            self._rounds(grid)
        except BaseException as exc:  # Flower logs and swallows what its ServerApp raises: keep it to re-raise
            self.error = exc

    def _rounds(self, grid) -> None:
        from flwr.app import ArrayRecord, ConfigRecord

        cfg, params = self.loaded.run, self.params
        self.run.evaluate_before(lambda generate: (self._score(self.weights), []), "the global model (round 0)")
        grid = self._introduce(grid)
        for round_ in range(self.done + 1, params.rounds + 1):
            started = time.perf_counter()
            arrays = ArrayRecord(self.weights)
            lr = lr_at(round_ - 1, params.rounds, cfg.train)  # train.schedule over the rounds
            replies = _in_client_order(self._exchange(grid, _configure_train(
                self.strategy, round_, arrays, ConfigRecord({"lr": lr}), grid, cfg.train.seed,
                (params.fraction, self.examples) if params.sampling == "examples" else None)))
            aggregated, _ = self.strategy.aggregate_train(round_, replies)
            answered = {self._name(r): r.content["metrics"] for r in replies if not r.has_error()}
            missing = [self._failure(r) for r in replies if r.has_error()]
            if aggregated is None and params.privacy and answered:
                raise TrainingError(f"round {round_}: {', '.join(missing)} failed, and under strategy.privacy Flower "
                                    "aggregates a round only when every sampled client answers (the noise is "
                                    "calibrated to them)\n  fix: see the client's error; --resume continues after "
                                    "the last aggregated round")
            if aggregated is None:
                raise TrainingError(f"round {round_}: no client returned trained weights ({', '.join(missing)})\n  "
                                    "fix: see the clients' errors; --resume continues after the last round")
            self.weights = aggregated.to_torch_state_dict()
            scored = round_ % params.client_eval_every == 0 or round_ == params.rounds
            evaluations = self._exchange(grid, self.strategy.configure_evaluate(
                round_, aggregated, ConfigRecord({}), grid)) if scored else []
            held_out = {self._name(r): {k: v for k, v in r.content["metrics"].items() if k not in ("client",
                                                                                                 "num-examples")}
                        for r in evaluations if not r.has_error()}
            scores = self._score(self.weights)
            sent = 2 * self.adapter_bytes * len(answered)  # FlowerTune's count: down and up, each client
            self.bytes_total += sent
            if missing:
                self.missing[round_] = missing
            row = {"clients": sorted(answered), "missing": missing, "global": scores,
                   "train_loss": {name: answered[name]["train_loss"] for name in sorted(answered)},
                   "client_scores": {name: held_out[name] for name in sorted(held_out)},
                   "bytes_exchanged": sent, "bytes_full_model": 2 * self.full_bytes * len(answered),
                   "wall_s": round(time.perf_counter() - started, 2)}
            if self.params.privacy:
                row["privacy"] = _privacy_spent(self.strategy)
            self.run.metrics.log(round_, "round", row)
            accountant = getattr(self.strategy, "accountant", None)
            state = {"round": round_, **({"privacy_accountant": accountant.state_dict()} if accountant else {})}
            checkpoint.write_checkpoint(self.run_dir / ROUNDS, round_, (
                {k: v.contiguous() for k, v in self.weights.items()}, _server_state(self.strategy, list(self.weights)),
                {"param_groups": [], "scalars": {}}), state, keep_last=2)
            self.done = round_
            spent = row.get("privacy", {})
            self.console.info(f"round {round_}/{params.rounds}: global {format_scores(scores)}; "
                              f"{len(answered)} clients" + (f", missing {', '.join(missing)}" if missing else "")
                              + f"; {_mib(sent)} exchanged; {row['wall_s']:.0f} s"
                              + (f"; ε {spent['epsilon']:.3g} at δ {spent['delta']:g}" if "epsilon" in spent else ""))

    def _introduce(self, grid) -> _Roster:
        """Wait for the clients a round needs, ask each connected node which client it is (a query message), and
        give Flower's strategies the grid with its nodes in their clients' order (under `sampling: examples` a
        client also says how many training examples it has)."""
        from flwr.app import Message, RecordDict

        least = min(self.params.min_clients or len(self.names), len(self.names))
        while len(nodes := list(grid.get_node_ids())) < least:
            time.sleep(1)
        for reply in self._exchange(grid, [Message(RecordDict(), dst_node_id=node, message_type="query")
                                           for node in nodes]):
            if not reply.has_error() and "examples" in reply.content["client"]:
                self.examples[self._name(reply)] = int(reply.content["client"]["examples"])
            elif not reply.has_error():
                self._name(reply)
        return _Roster(grid, self.nodes)

    def _score(self, weights: dict[str, torch.Tensor]) -> dict:
        checkpoint.restore_trainable(self.session.model, weights, "the aggregated weights")
        return self.evaluate(generate=True)[0]

    def _name(self, reply) -> str:
        name = str(reply.content["client"]["name"])
        self.nodes[reply.metadata.src_node_id] = name  # to name it should it fail later
        return name

    def _exchange(self, grid, messages) -> list:
        """Send and wait for every answer (Flower answers for a node whose heartbeat lapsed with an error)."""
        messages = list(messages)
        replies = list(grid.send_and_receive(messages, timeout=_ROUND_TIMEOUT_S))
        self.destinations.update({m.metadata.message_id: m.metadata.dst_node_id for m in messages})
        return replies

    def _failure(self, reply) -> str:
        """A client that did not answer, by name where it answered before, with the last line of why (an error
        Flower writes for a lost node comes from the SuperLink: the node is the one the message went to)."""
        node = self.destinations.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        reason = (reply.error.reason or "").rsplit("Message: ", 1)[-1]  # a client's exception, after Flower's words
        reason = " ".join(line.strip() for line in reason.strip().rstrip("'>)").splitlines() if line.strip())
        return self.nodes.get(node, f"node {node}") + (f" ({reason[:300]})" if reason else "")


class _Roster:
    """A grid whose connected nodes come in the order of their clients' names (nodes not yet introduced last),
    not in the order of their random node ids; `only`: the nodes a round drew, the others hidden."""

    def __init__(self, grid, names: dict[int, str], only: list[int] | None = None):
        self.grid, self.names, self.only = grid, names, only

    def get_node_ids(self) -> list[int]:
        nodes = [n for n in self.grid.get_node_ids() if self.only is None or n in self.only]
        return sorted(nodes, key=lambda node: (node not in self.names, self.names.get(node, ""), node))

    def drawn(self, fraction: float, examples: dict[str, int]) -> _Roster:
        """This roster less all but `fraction` of its nodes, drawn without replacement in proportion to their
        clients' examples (Efraimidis and Spirakis' keys u^(1/w), from the seeded `random`: call it inside
        `_configure_train`'s seeding). A client that did not say weighs the mean of those that did."""
        nodes = self.get_node_ids()
        known = [examples[self.names[n]] for n in nodes if self.names.get(n) in examples] or [1]
        weight = {n: max(examples.get(self.names.get(n, ""), sum(known) / len(known)), 1e-9) for n in nodes}
        keys = {n: random.random() ** (1 / weight[n]) for n in nodes}
        return _Roster(self.grid, self.names, sorted(nodes, key=keys.__getitem__)[-max(1, round(fraction *
                                                                                               len(nodes))):])

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


def _configure_train(strategy, round_: int, arrays, config, roster: _Roster, seed: int,
                     by_examples: tuple[float, dict[str, int]] | None = None) -> list:
    """The round's messages to the clients Flower's strategy samples. It samples with the `random` module from
    the roster's order: seeded by the run's seed and the round, a federation draws the same clients every time
    it runs, whatever node ids its clients were given. `by_examples` (fraction, each client's examples): the
    clients are drawn here in proportion to their examples, and Flower's strategy takes all it is shown."""
    random.seed(f"{seed}:{round_}")
    if by_examples:
        roster = roster.drawn(*by_examples)
    return list(strategy.configure_train(round_, arrays, config, roster))


_ROUND_TIMEOUT_S = 24 * 3600.0  # a round waits for its clients; a client that fails answers with an error


def _in_client_order(replies) -> list:
    """The replies in the clients' order, not their arrival's, so the aggregate's sums run in one order and a
    federation is reproducible (bf16 generation turns a last-bit difference into other answers)."""
    return sorted(replies, key=lambda r: (r.has_error(), str(r.content["client"]["name"]) if not r.has_error()
                                          else str(r.metadata.src_node_id)))


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


def _server_state(strategy, names: list[str]) -> dict[str, torch.Tensor]:
    """A server optimizer's state, to resume with it: FedAdam's and FedYogi's moments (by weight name), FedAvgM's
    momentum (a list in the weights' order, `names`)."""
    strategy = getattr(strategy, "strategy", strategy)  # inside a privacy wrapper
    state = {}
    for slot in ("m_t", "v_t"):
        for name, value in (getattr(strategy, slot, None) or {}).items():
            state[f"{slot}.{name}"] = torch.from_numpy(value.copy())
    for name, value in zip(names, getattr(strategy, "momentum_vector", None) or [], strict=False):
        state[f"momentum.{name}"] = torch.from_numpy(value.copy())
    return state


def _last_round(run_dir: Path, strategy, order: list[str]) -> tuple[int, dict[str, torch.Tensor]]:
    """The last aggregated round's weights, in the model's `order` (Flower's strategies pair a round's arrays
    with the clients' by position), and the server optimizer's state put back."""
    from safetensors.torch import load_file

    found, skipped = checkpoint.latest_checkpoint(run_dir / ROUNDS)
    if found is None:
        raise TrainingError(f"--resume: no complete round in {run_dir / ROUNDS}"
                            + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
                            + "\n  fix: start again with output.overwrite=true")
    state = load_file(found / "optimizer.safetensors")
    accountant = getattr(strategy, "accountant", None)
    if accountant is not None:
        accountant.load_state_dict(read_json(found / "state.json")["privacy_accountant"])
    inner = getattr(strategy, "strategy", strategy)
    saved = load_file(found / "trainable.safetensors")
    weights = {name: saved[name] for name in order}
    for slot in ("m_t", "v_t", "momentum"):
        moments = {k.split(".", 1)[1]: v.numpy() for k, v in state.items() if k.startswith(f"{slot}.")}
        if moments and slot == "momentum":
            inner.momentum_vector = [moments[name] for name in weights]
        elif moments:
            setattr(inner, slot, moments)
    return checkpoint.step_of(found), weights


def _server_data(loaded: LoadedConfig, recipe: Recipe) -> Prepared:
    """The server's data: the tokenizer and `data.test` only (the training data is the clients')."""
    cfg = loaded.run
    if not cfg.data.test:
        raise ConfigError(f"{loaded.where('data')}: a federated run scores the global model on data.test\n  fix: "
                          "give data.test (held-out records the server may read)")
    tokenizer = load_tokenizer(cfg.model)
    test_raw = read_splits(loaded, recipe.objective, [], {"test": cfg.data.test})["test"]
    if cfg.eval.max_examples:
        test_raw = first_per_task(test_raw, cfg.eval.max_examples)
    test, _ = encode_examples(test_raw, tokenizer, cfg.data, apply_drop_guard=False)
    return Prepared([], test, test_raw, tokenizer, use_chat_template(tokenizer, cfg.data.template), {})


def _exchange_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of the exchanged (trainable) weights, and of the whole model's weights in fp32 (what a full-model
    federation would exchange)."""
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() * 4 for p in model.parameters())


def _mib(size: float) -> str:
    return f"{size / 2**20:.2f} MiB"


def _client_names(params: FederatedParams) -> list[str]:
    if params.client_data:
        return [Path(p).stem for p in params.client_data]
    return [f"client-{i}" for i in range(params.clients)]


def _simulate(server: _Server, client_app, clients: int) -> None:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    for name in ("flwr", "ray"):  # tuneforge reports the rounds; Flower's and Ray's notices are not the user's
        logging.getLogger(name).setLevel(logging.ERROR)
    app = ServerApp()
    app.main()(server.main)
    # the client processes (Ray's workers) inherit this process's environment: libraries' notices off there
    quiet = {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    saved = {key: os.environ.get(key) for key in quiet}
    os.environ.update(quiet)
    try:
        run_simulation(server_app=app, client_app=client_app, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": 1},
                                       "init_args": {"logging_level": logging.ERROR, "log_to_driver": True,
                                                     "include_dashboard": False}})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _require_flower(where: str) -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError(f"{where}: strategy federated runs on Flower, which is not installed\n  fix: pip install "
                          "'tuneforge[federated]'") from None


# ----------------------------------------------------------------------------------------------- the clients


@dataclass
class _ClientData:
    train: list
    heldout: Prepared


_PROCESS: dict = {}  # per client process: the session (built once) and each client's data


def client_app(resolve):
    """The ClientApp: `resolve(context)` gives the tuneforge config and strategy parameters (the simulation's own;
    a deployed client reads the config the run names)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def identity(context) -> tuple:
        loaded, params = resolve(context)
        who = _Who.of(context.node_config, params)
        session, data = _client(loaded, params, who)
        return loaded, params, who, session, data

    @app.train()
    def train(message, context):
        loaded, params, who, session, data = identity(context)
        config = message.content["config"]
        checkpoint.restore_trainable(session.model, message.content["arrays"].to_torch_state_dict(), "the server")
        losses = _train_locally(loaded, params, session, data, who.index, int(config["server-round"]),
                                float(config["lr"]), float(config.get("proximal-mu", 0.0)))
        metrics = {"num-examples": len(data.train), "one": 1, "train_loss": sum(losses) / len(losses)}
        return Message(RecordDict({"arrays": ArrayRecord(checkpoint.trainable_state(session.model)),
                                   "metrics": MetricRecord(metrics), "client": ConfigRecord({"name": who.name})}),
                       reply_to=message)

    @app.query()
    def introduce(message, context):  # its name, and its examples where they count and its data loads
        loaded, params = resolve(context)
        who = _Who.of(context.node_config, params)
        said: dict = {"name": who.name}
        if params.sampling == "examples":
            with suppress(TuneforgeError):  # it is sampled as an average client, and fails by name in train
                said["examples"] = len(_data(loaded, params, who).train)
        return Message(RecordDict({"client": ConfigRecord(said)}), reply_to=message)

    @app.evaluate()
    def evaluate(message, context):
        loaded, _, who, session, data = identity(context)
        checkpoint.restore_trainable(session.model, message.content["arrays"].to_torch_state_dict(), "the server")
        scores = make_evaluator(session, data.heldout, loaded.run)(generate=True)[0]
        flat = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
        return Message(RecordDict({"metrics": MetricRecord({**flat, "num-examples": len(data.heldout.test_raw)}),
                                   "client": ConfigRecord({"name": who.name})}), reply_to=message)

    return app


@dataclass(frozen=True)
class _Who:
    """A client: its index (the partition of data.train it takes, or its entry of client_data), its name, and
    its own data file when its SuperNode was started with one (`--node-config 'data-path="..."'`)."""

    index: int
    name: str
    path: str | None = None

    @classmethod
    def of(cls, node: dict, params: FederatedParams) -> _Who:
        path = node.get("data-path")
        index = int(node.get("partition-id", 0))
        if path:
            return cls(index, str(node.get("name") or Path(str(path)).stem), str(path))
        return cls(index, _client_names(params)[index])


def deployed_config(context) -> tuple[LoadedConfig, FederatedParams]:
    """A deployed app's tuneforge config: the YAML the run names (`flwr run ... --run-config 'config="..."'`)."""
    from tuneforge.config import load_config

    path = str(context.run_config.get("config") or "")
    if path not in _PROCESS:
        if not path:
            raise ConfigError("flwr run: no tuneforge config\n  fix: flwr run APP local --run-config "
                              "'config=\"/path/to/config.yaml\"'")
        loaded = load_config(path)
        _PROCESS[path] = (loaded, validate_strategy_params(loaded.run.strategy, loaded.where("strategy")))
    return _PROCESS[path]


def _client(loaded: LoadedConfig, params: FederatedParams, who: _Who):
    """This process's model (built once, whichever clients it serves) and the client's data."""
    if "session" not in _PROCESS:
        _PROCESS["session"] = open_session(loaded, read_recipe(loaded), RunConsole(silent=True))
    return _PROCESS["session"], _data(loaded, params, who)


def _data(loaded: LoadedConfig, params: FederatedParams, who: _Who) -> _ClientData:
    if "tokenizer" not in _PROCESS:
        _PROCESS["tokenizer"] = load_tokenizer(loaded.run.model)
    if who not in _PROCESS:
        _PROCESS[who] = _client_data(loaded, params, who.index, _PROCESS["tokenizer"], who.path)
    return _PROCESS[who]


def _client_data(loaded: LoadedConfig, params: FederatedParams, index: int, tokenizer,
                 path: str | None = None) -> _ClientData:
    """Client `index`'s records: its own file (`path`, or its entry of client_data), or its share of data.train
    (the same seeded split in every client), less the held-out share it scores the global model on."""
    import random

    cfg = loaded.run
    objective = read_recipe(loaded).objective
    path = path or (params.client_data[index] if params.client_data else None)
    if path:
        records = read_splits(loaded, objective, [], {"train": [DatasetSpec(path=path)]})["train"]
    else:
        everything = read_splits(loaded, objective, [], {"train": cfg.data.train})["train"]
        shares = split_clients([e.task for e in everything], params.clients, params.split, params.alpha,
                               params.min_client_examples, cfg.train.seed, loaded.where("strategy"))
        records = [everything[i] for i in shares[index]]
    records = list(records)
    random.Random(cfg.train.seed + index).shuffle(records)
    cut = round(len(records) * params.holdout)
    heldout_raw, train_raw = records[:cut], records[cut:]
    train, _ = encode_examples(train_raw, tokenizer, cfg.data)
    heldout, _ = encode_examples(heldout_raw, tokenizer, cfg.data, apply_drop_guard=False) if heldout_raw else ([], 0)
    chat = use_chat_template(tokenizer, cfg.data.template)
    return _ClientData(train, Prepared([], heldout, heldout_raw, tokenizer, chat, {}))


class _Losses(Metrics):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def log(self, step: int, kind: str, values: dict) -> None:
        if kind == "train":
            self.losses.append(values["loss"])


def _train_locally(loaded: LoadedConfig, params: FederatedParams, session, data: _ClientData, index: int,
                   round_: int, lr: float, mu: float) -> list[float]:
    """`local_steps` optimizer steps on the client's data at the round's learning rate (a fresh optimizer each
    round, a shuffle seeded by the round and client); FedProx's μ/2·‖w − w_global‖² as the loop's penalty."""
    cfg = loaded.run
    local = cfg.train.model_copy(update={
        "max_steps": params.local_steps, "epochs": 1.0, "lr": lr, "schedule": "constant", "warmup_steps": 0,
        "warmup_ratio": 0.0, "seed": cfg.train.seed + 1000 * round_ + index, "eval_every": 0, "save_every": 0,
        "early_stopping_patience": None})
    phase = cfg.model_copy(update={"train": local})
    prepared = Prepared(data.train, [], [], data.heldout.tokenizer, data.heldout.chat, {})
    losses = _Losses()
    with TemporaryDirectory() as scratch:
        inputs = loop_inputs(session, prepared, phase, losses, RunConsole(silent=True), Path(scratch) / CHECKPOINTS,
                             lambda generate: ({}, []))
        if mu > 0:
            anchors = {n: p.detach().clone() for n, p in session.model.named_parameters() if p.requires_grad}
            inputs.penalty = lambda model: l2sp({n: p for n, p in model.named_parameters() if p.requires_grad},
                                                anchors, mu)
        train_loop(inputs, LoopState())
    return losses.losses


def serve_deployed(grid, context) -> None:
    """The ServerApp a SuperLink runs (`flwr run`): the run as `tuneforge train` would do it, on the grid of the
    connected SuperNodes; `--run-config 'config="..." resume=true'`."""
    loaded, params = deployed_config(context)
    run(loaded, params, resume=bool(context.run_config.get("resume", False)), quiet=False, grid=grid)


STRATEGY = Strategy("federated", "clients train the adapter on their own data; Flower aggregates the weights "
                    "(FedAvg, FedAvgM, FedProx, FedAdam, FedYogi)", FederatedParams, run)
