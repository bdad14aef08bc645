"""The federation's clients: the `ClientApp` each SuperNode (or simulated node) runs — who it is, its data (its share
of data.train, or its own file, less what it holds out), local training through the engine's pieces with FedProx's
proximal term as the loop's penalty, and its scores of the global model on its held-out data."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from tuneforge.config import DatasetSpec, LoadedConfig
from tuneforge.data.dataset import encode_examples
from tuneforge.data.kinds import read_splits
from tuneforge.data.partition import split_clients
from tuneforge.data.render import use_chat_template
from tuneforge.engine import checkpoint
from tuneforge.engine.console import Metrics, RunConsole
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.session import Prepared, loop_inputs, make_evaluator, open_session
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.models.load import load_tokenizer
from tuneforge.runs.layout import CHECKPOINTS
from tuneforge.runs.recipe import read_recipe
from tuneforge.strategies.params import FederatedParams
from tuneforge.strategies.penalties import l2sp


def _client_names(params: FederatedParams) -> list[str]:
    if params.client_data:
        return [Path(p).stem for p in params.client_data]
    return [f"client-{i}" for i in range(params.clients)]


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
    def introduce(message, context):  # who it is (the server admits it or not) and its examples, where its data loads
        loaded, params = resolve(context)
        who = _Who.of(context.node_config, params)
        said: dict = {"name": who.name, "partition": who.index}
        with suppress(TuneforgeError):  # admitted without a size, it fails by name in train
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
        count = len(_client_names(params))
        try:
            index = int(node.get("partition-id", 0))
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < count:
            raise ConfigError(f"node-config partition-id={node.get('partition-id')!r}: not one of this federation's "
                              f"clients 0 to {count - 1}\n  fix: start each SuperNode with its own partition-id from 0 "
                              f"to {count - 1} (strategy.clients: {count})")
        if path:
            return cls(index, str(node.get("name") or Path(str(path)).stem), str(path))
        return cls(index, _client_names(params)[index])


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
        everything, shares = _shares(loaded, params, objective)
        records = [everything[i] for i in shares[index]]
    records = list(records)
    random.Random(cfg.train.seed + index).shuffle(records)
    cut = round(len(records) * params.holdout)
    heldout_raw, train_raw = records[:cut], records[cut:]
    train, _ = encode_examples(train_raw, tokenizer, cfg.data)
    heldout, _ = encode_examples(heldout_raw, tokenizer, cfg.data, apply_drop_guard=False) if heldout_raw else ([], 0)
    chat = use_chat_template(tokenizer, cfg.data.template)
    return _ClientData(train, Prepared([], heldout, heldout_raw, tokenizer, chat, {}))


def _shares(loaded: LoadedConfig, params: FederatedParams, objective) -> tuple[list, list[list[int]]]:
    """Every record of data.train and each client's share of them (the same seeded split in every client)."""
    cfg = loaded.run
    if not cfg.data.train:
        raise ConfigError(f"{loaded.where('data')}: this client has no data of its own and data.train is empty\n  "
                          "fix: start its SuperNode with --node-config 'data-path=\"FILE\"', or give data.train (split "
                          "among the clients) or strategy.client_data")
    everything = read_splits(loaded, objective, [], {"train": cfg.data.train})["train"]
    return everything, split_clients([e.task for e in everything], params.clients, params.split, params.alpha,
                                     params.min_client_examples, cfg.train.seed, loaded.where("strategy"))


def check_split(loaded: LoadedConfig, params: FederatedParams) -> None:
    """Before a simulated federation starts Ray or writes its run directory: data.train can be split among the
    clients (enough records, a Dirichlet draw that gives each its minimum). Checked in a process of its own, as a
    client would, so that the server's process never opens data.train."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        problem = pool.apply(_split_problem, (loaded, params))
    if problem:
        raise ConfigError(problem)


def _split_problem(loaded: LoadedConfig, params: FederatedParams) -> str | None:
    try:
        _shares(loaded, params, read_recipe(loaded).objective)
    except TuneforgeError as exc:
        return str(exc)
    return None


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
