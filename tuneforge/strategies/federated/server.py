"""The federation's server: the rounds run inside Flower's `ServerApp` (sample the clients, aggregate their
weights, score the global model, log and checkpoint each round), the server's own data (`data.test` only), a resume
after the last aggregated round, and Flower's simulation on this machine."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import torch

from tuneforge.config import LoadedConfig
from tuneforge.data.dataset import encode_examples
from tuneforge.data.kinds import read_splits
from tuneforge.data.render import use_chat_template
from tuneforge.engine import checkpoint
from tuneforge.engine.console import format_scores
from tuneforge.engine.optim import lr_at
from tuneforge.engine.session import Prepared, Recipe, first_per_task
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.models.load import load_tokenizer
from tuneforge.runs.layout import ROUNDS, read_json
from tuneforge.runs.run import Run
from tuneforge.strategies.federated.aggregation import _privacy_spent


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
        self.nodes: dict[int, str] = {}  # the admitted nodes: node id -> its client's name
        self.partitions: dict[int, int] = {}  # node id -> the client's partition (0 to clients - 1)
        self.refused: dict[int, str] = {}  # nodes that are not one of the federation's clients, and why
        self.examples: dict[str, int] = {}  # client -> its training examples, as it said when admitted
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
        self._admit(grid, min(self.params.min_clients or len(self.names), len(self.names)))
        grid = _Roster(grid, self.nodes)
        for round_ in range(self.done + 1, params.rounds + 1):
            started = time.perf_counter()
            self._admit(grid.grid)  # a node that connected since is asked who it is
            arrays = ArrayRecord(self.weights)
            lr = lr_at(round_ - 1, params.rounds, cfg.train)  # train.schedule over the rounds
            replies = _in_client_order(self._exchange(grid, _configure_train(
                self.strategy, round_, arrays, ConfigRecord({"lr": lr}), grid, cfg.train.seed,
                (params.fraction, self.examples) if params.sampling == "examples" else None)))
            replies, refused = self._as_introduced(replies)
            aggregated, _ = self.strategy.aggregate_train(round_, replies)
            answered = {self._name(r): r.content["metrics"] for r in replies if not r.has_error()}
            missing = [self._failure(r) for r in replies if r.has_error()] + refused
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
                   "nodes": {name: node for node, name in self.nodes.items() if name in answered},
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

    def _admit(self, grid, least: int = 0) -> None:
        """Ask each connected node not yet known which client it is (a query message; it also says its training
        examples), and admit it as that client when the claim holds: a partition of this federation (0 to clients
        - 1) that no connected node holds, under a name no connected node has. A claim on a connected client stops
        the federation — which of the two nodes is the client cannot be told here (SuperNode authentication tells
        it); a node that cannot say, or claims no partition of the federation, is refused and named. Waits until
        `least` admitted clients are connected."""
        from flwr.app import Message, RecordDict

        while True:
            connected = set(grid.get_node_ids())
            new = [node for node in sorted(connected) if node not in self.nodes and node not in self.refused]
            asked = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in new]
            for reply in self._exchange(grid, asked) if asked else []:
                self._admit_one(reply, connected)
            if sum(node in self.nodes for node in grid.get_node_ids()) >= least:
                return
            time.sleep(1)

    def _admit_one(self, reply, connected: set[int]) -> None:
        node = self._node_of(reply)
        said = {} if reply.has_error() else reply.content.get("client", {})
        name, partition = said.get("name"), said.get("partition")
        if reply.has_error() or not isinstance(name, str) or not isinstance(partition, int) \
                or not 0 <= partition < len(self.names):
            self.refused[node] = (self._failure(reply) if reply.has_error() else f"node {node} claims partition "
                                  f"{partition!r} of {len(self.names)} clients, as {name!r}")
            self.console.info(f"refused SuperNode {node}: {self.refused[node]}")
            return
        holder = next((other for other, held in self.nodes.items() if other in connected
                       and (held == name or self.partitions[other] == partition)), None)
        if holder is not None:
            raise TrainingError(f"SuperNode {node} says it is client '{name}' (partition {partition}), but SuperNode "
                                f"{holder} is client '{self.nodes[holder]}' (partition {self.partitions[holder]}) "
                                "already; which of them is the client cannot be told, so the federation stops before "
                                "either trains\n  fix: run the SuperLink with SuperNode authentication (see the "
                                "federated guide) so that only your SuperNodes join, give each SuperNode its own name "
                                "and partition-id, then continue with --resume")
        for other in [other for other, held in self.nodes.items() if held == name or self.partitions[other] ==
                      partition]:  # the client's node before it reconnected under a new id
            del self.nodes[other], self.partitions[other]
        self.nodes[node], self.partitions[node] = name, partition
        if "examples" in said:
            self.examples[name] = int(said["examples"])

    def _as_introduced(self, replies: list) -> tuple[list, list[str]]:
        """The replies of admitted clients as they introduced themselves (their name, their examples: FedAvg
        weighs a client by the examples it reports); one that says otherwise is named and not aggregated."""
        kept, refused = [], []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)
                continue
            node = self._node_of(reply)
            name, reported = self.nodes.get(node), int(reply.content["metrics"]["num-examples"])
            known = self.examples.get(name or "")
            if name is None or str(reply.content["client"]["name"]) != name:
                refused.append(f"node {node} (answered as '{reply.content['client']['name']}', not a client admitted "
                               "under that name: not aggregated)")
            elif known is not None and reported != known:
                refused.append(f"{name} (reported {reported} training examples, {known} when it was admitted: not "
                               "aggregated)")
            else:
                kept.append(reply)
        return kept, refused

    def roster(self) -> dict:
        """Who took part: each admitted client's node, partition and examples; and the refused nodes."""
        return {"roster": {name: {"node": node, "partition": self.partitions[node],
                                  "examples": self.examples.get(name)} for node, name in sorted(
                                      self.nodes.items(), key=lambda item: item[1])},
                **({"refused": {str(node): why for node, why in self.refused.items()}} if self.refused else {})}

    def _score(self, weights: dict[str, torch.Tensor]) -> dict:
        checkpoint.restore_trainable(self.session.model, weights, "the aggregated weights")
        return self.evaluate(generate=True)[0]

    def _name(self, reply) -> str:
        """The admitted client that sent the reply (to the node it was sent to)."""
        return self.nodes[self._node_of(reply)]

    def _node_of(self, reply) -> int:
        """The node a reply answers for: the one its message was sent to."""
        return self.destinations.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def _exchange(self, grid, messages) -> list:
        """Send and wait for every answer (Flower answers for a node whose heartbeat lapsed with an error)."""
        messages = list(messages)
        replies = list(grid.send_and_receive(messages, timeout=_ROUND_TIMEOUT_S))
        self.destinations.update({m.metadata.message_id: m.metadata.dst_node_id for m in messages})
        return replies

    def _failure(self, reply) -> str:
        """A client that did not answer, by name where it answered before, with the last line of why (an error
        Flower writes for a lost node comes from the SuperLink: the node is the one the message went to)."""
        node = self._node_of(reply)
        reason = (reply.error.reason or "").rsplit("Message: ", 1)[-1]  # a client's exception, after Flower's words
        reason = " ".join(line.strip() for line in reason.strip().rstrip("'>)").splitlines() if line.strip())
        return self.nodes.get(node, f"node {node}") + (f" ({reason[:300]})" if reason else "")


class _Roster:
    """A grid that shows Flower's strategies only the connected nodes admitted as clients (`names`), in the order
    of their clients' names, not of their random node ids; `only`: the nodes a round drew, the others hidden."""

    def __init__(self, grid, names: dict[int, str], only: list[int] | None = None):
        self.grid, self.names, self.only = grid, names, only

    def get_node_ids(self) -> list[int]:
        nodes = [n for n in self.grid.get_node_ids() if n in self.names and (self.only is None or n in self.only)]
        return sorted(nodes, key=lambda node: (self.names[node], node))

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
