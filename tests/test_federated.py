"""`strategy: federated` on Flower: the client splits (pure), the strategy's mapping onto Flower's own, and one
federation in Flower's simulation on the tiny model, whose server process is watched never to open the
clients' training data."""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config, write_jsonl
from tuneforge.data.partition import split_clients
from tuneforge.errors import ConfigError


def test_dirichlet_split_gives_every_record_to_one_client_and_skews_tasks():
    tasks = [f"task{i % 4}" for i in range(400)]
    shares = split_clients(tasks, 10, "dirichlet", 0.3, 5, seed=1, where="strategy")
    rows = sorted(i for share in shares for i in share)
    assert rows == list(range(400))
    assert min(len(s) for s in shares) >= 5
    # non-IID: most clients hold one task for more than half their records (an IID split would hold ~25%)
    dominant = [Counter(tasks[i] for i in share).most_common(1)[0][1] / len(share) for share in shares]
    assert sum(d > 0.5 for d in dominant) >= 6
    assert split_clients(tasks, 10, "dirichlet", 0.3, 5, seed=1, where="strategy") == shares  # seeded
    iid = split_clients(tasks, 4, "iid", 1.0, 1, seed=1, where="strategy")
    assert sorted(len(s) for s in iid) == [100] * 4
    assert all(len(Counter(tasks[i] for i in s)) == 4 for s in iid)


def test_a_split_that_cannot_be_made_is_a_located_error():
    with pytest.raises(ConfigError, match=r"strategy: .*cannot be split among 10 clients"):
        split_clients(["a"] * 5, 10, "iid", 1.0, 1, seed=0, where="strategy")
    with pytest.raises(ConfigError, match="fewer than two"):
        split_clients(["a"] * 50, 5, "dirichlet", 0.5, 1, seed=0, where="strategy")


def test_aggregations_are_flowers_own_strategies():
    from flwr.serverapp import strategy as flower

    from tuneforge.strategies.federated.aggregation import _flower_strategy
    from tuneforge.strategies.params import FederatedParams

    def made(aggregation: dict):
        params = FederatedParams(clients=4, fraction=0.5, aggregation=aggregation)
        return _flower_strategy(params.chosen(), params, 4, 1e-3)

    assert type(made({"name": "fedavg"})) is flower.FedAvg
    prox = made({"name": "fedprox", "mu": 0.5})
    assert type(prox) is flower.FedProx and prox.proximal_mu == 0.5
    adam = made({"name": "fedadam", "eta": 0.02})
    assert type(adam) is flower.FedAdam and adam.eta == 0.02
    assert type(made({"name": "fedyogi"})) is flower.FedYogi
    heavy = made({"name": "fedavgm", "server_lr": 1.5, "momentum": 0.9})
    assert type(heavy) is flower.FedAvgM and (heavy.server_learning_rate, heavy.server_momentum) == (1.5, 0.9)
    assert prox.min_train_nodes == 2 and prox.min_available_nodes == 4


def test_a_round_samples_the_same_clients_whatever_node_ids_they_were_given(monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from tuneforge.strategies.federated.aggregation import _flower_strategy
    from tuneforge.strategies.federated.server import _configure_train, _Roster
    from tuneforge.strategies.params import FederatedParams

    params = FederatedParams(clients=6, fraction=0.5)
    strategy = _flower_strategy(params.chosen(), params, 6, 1e-3)
    for slot in ("_run_id", "_node_id", "_task_id"):  # a ServerApp process's identity: messages carry it
        monkeypatch.setattr(TaskIdentity, slot, 1)

    class Grid:
        def __init__(self, nodes):
            self.nodes = nodes

        def get_node_ids(self):
            return list(self.nodes)

    def sampled(nodes: list[int], round_: int) -> list[str]:
        names = {node: f"client-{i}" for i, node in enumerate(nodes)}
        messages = _configure_train(strategy, round_, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}),
                                    _Roster(Grid(sorted(nodes)), names), seed=42)
        return sorted(names[m.metadata.dst_node_id] for m in messages)

    first = sampled([51, 32, 93, 14, 75, 26], 1)
    assert len(first) == 3 and sampled([8, 6, 4, 2, 9, 7], 1) == first
    assert len({tuple(sampled([51, 32, 93, 14, 75, 26], r)) for r in range(1, 6)}) > 1  # rounds draw anew

    # sampling: examples: drawn in proportion to the clients' examples, Flower's strategy taking all it is shown
    params = FederatedParams(clients=6, fraction=0.34, sampling="examples")
    strategy = _flower_strategy(params.chosen(), params, 6, 1e-3)
    assert strategy.weighted_by_key == "one"  # the draw already weighs a client by its size
    sizes = {"client-0": 400, "client-1": 10, "client-2": 10, "client-3": 10, "client-4": 10}  # client-5: unsaid

    def drawn(nodes: list[int], round_: int) -> list[str]:
        names = {node: f"client-{i}" for i, node in enumerate(nodes)}
        messages = _configure_train(strategy, round_, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}),
                                    _Roster(Grid(sorted(nodes)), names), 42, (params.fraction, sizes))
        return sorted(names[m.metadata.dst_node_id] for m in messages)

    rounds = [drawn([51, 32, 93, 14, 75, 26], r) for r in range(1, 41)]
    assert all(len(r) == 2 for r in rounds) and rounds[0] == drawn([8, 6, 4, 2, 9, 7], 1)
    counts = {name: sum(name in r for r in rounds) for name in [f"client-{i}" for i in range(6)]}
    assert counts["client-0"] >= 36  # 400 of 488 examples (+ client-5 at the mean, 88): nearly every round
    assert counts["client-5"] > max(counts[f"client-{i}"] for i in range(1, 5))  # weighs the mean of the others


def test_a_server_optimizers_state_comes_back_after_a_restart_in_the_models_order(tmp_path):
    """FedAvgM's momentum (a list Flower pairs with the arrays by position) and the weights come back in the
    model's order, not the checkpoint file's sorted one."""
    import numpy as np

    from tuneforge.engine import checkpoint
    from tuneforge.runs.layout import ROUNDS
    from tuneforge.strategies.federated.aggregation import _flower_strategy
    from tuneforge.strategies.federated.server import _last_round, _server_state
    from tuneforge.strategies.params import FederatedParams

    params = FederatedParams(clients=2, aggregation={"name": "fedavgm", "momentum": 0.9})
    weights = {"z.lora_B": torch.randn(2, 3), "a.lora_A": torch.randn(3, 2)}  # the model's order, not sorted
    before = _flower_strategy(params.chosen(), params, 2, 1e-3)
    before.momentum_vector = [np.full((2, 3), 1.0, np.float32), np.full((3, 2), 2.0, np.float32)]
    checkpoint.write_checkpoint(tmp_path / ROUNDS, 1, (weights, _server_state(before, list(weights)), {
        "param_groups": [], "scalars": {}}), {"round": 1}, keep_last=2)
    after = _flower_strategy(params.chosen(), params, 2, 1e-3)
    done, restored = _last_round(tmp_path, after, list(weights))
    assert done == 1 and list(restored) == ["z.lora_B", "a.lora_A"]
    assert [m.tolist() for m in after.momentum_vector] == [m.tolist() for m in before.momentum_vector]


def test_a_typo_in_the_aggregation_names_the_nearest_key():
    from tuneforge.config import NamedParams
    from tuneforge.strategies import validate_strategy_params

    with pytest.raises(ConfigError, match=r"did you mean 'strategy\.aggregation\.mu'"):
        validate_strategy_params(NamedParams(name="federated", aggregation={"name": "fedprox", "muu": 1}))


@pytest.mark.heavy  # Flower's simulation engine (Ray workers): CI runs it in make test-heavy
def test_a_federation_in_simulation_trains_and_never_opens_client_data_on_the_server(tmp_path, tiny_model_dir):
    """Three clients, two rounds of FedAvg in Flower's simulation (each client a Ray actor), and a fourth that
    fails. The server (this process) reads the config, the model and data.test; an audit hook sees every file it
    opens."""
    from tuneforge.api import train

    # the clients drawn by their examples (each says how many when it introduces itself; all four drawn)
    config = _federation(tmp_path, tiny_model_dir, 2, client_eval_every=2, sampling="examples")
    # a fourth client whose data cannot be read fails every round: the rounds go on with the three that answer
    broken = tmp_path / "hospital-3.jsonl"
    broken.write_text('{"prompt": "Repeat 1", "completion": "1"}\n{"prompt": "Repeat 2", "completion": ""}\n')
    config["strategy"]["client_data"].append(str(broken))
    opened: list[str] = []
    watching = {"on": True}

    def audit(event: str, args: tuple) -> None:
        if watching["on"] and event == "open" and isinstance(args[0], str | bytes):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        result = train(config, quiet=True)
    finally:
        watching["on"] = False
    assert not [path for path in opened if "hospital-" in path], "the server opened a client's data"
    assert any(path.endswith("test.jsonl") for path in opened)  # it did read its own test set

    run_dir = result.run_dir
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [row for row in rows if row["kind"] == "round"]
    assert [row["step"] for row in rounds] == [1, 2]
    scores = json.loads((run_dir / "eval.json").read_text())  # the base's and the final scores are rows too
    before, after = rows[0], rows[-1]
    assert (before["kind"], before["step"], after["kind"], after["step"]) == ("eval_before", 0, "final_eval", 2)
    assert before["loss"] == pytest.approx(scores["before"]["loss"])
    assert after["loss"] == pytest.approx(scores["after"]["loss"])
    for row in rounds:
        assert row["clients"] == ["hospital-0", "hospital-1", "hospital-2"]
        assert len(row["missing"]) == 1 and "hospital-3.jsonl:2" in row["missing"][0]  # the client's own error
        assert "loss" in row["global"]  # the server scores data.test every round, the clients every second
        assert set(row["client_scores"]) == (set(row["clients"]) if row["step"] == 2 else set())
        assert row["bytes_exchanged"] == 2 * 3 * 8192 * 4  # the LoRA weights in fp32, down and up, 3 clients
        assert row["bytes_exchanged"] / row["bytes_full_model"] < 0.05
    # the saved adapter is the last aggregated round's, and it moved from the initial weights
    saved = load_file(run_dir / "rounds" / "step-00000002" / "trainable.safetensors")
    first = load_file(run_dir / "rounds" / "step-00000001" / "trainable.safetensors")
    assert any(not torch.equal(saved[k], first[k]) for k in saved)
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete" and status["clients"][:3] == ["hospital-0", "hospital-1", "hospital-2"]
    assert sorted(status["train"]["missing"]) == ["1", "2"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_under_privacy_a_failed_client_stops_the_round_with_a_located_error(tmp_path, tiny_model_dir):
    """Flower's DP wrapper aggregates nothing when a sampled client fails (its noise is calibrated to all of
    them): the run ends with the failed client named and the --resume fix, not 'no client returned weights'."""
    from tuneforge.api import train
    from tuneforge.errors import TrainingError

    config = _federation(tmp_path, tiny_model_dir, 1, privacy={"clipping_norm": 1.0, "noise_multiplier": 0.5})
    broken = tmp_path / "hospital-3.jsonl"
    broken.write_text('{"prompt": "Repeat 1", "completion": "1"}\n{"prompt": "Repeat 2", "completion": ""}\n')
    config["strategy"]["client_data"].append(str(broken))
    with pytest.raises(TrainingError, match=r"round 1: hospital-3 \(.*hospital-3.jsonl:2.*every sampled client"):
        train(config, quiet=True)


class _Nodes:
    """The one thing a Flower strategy asks of the grid when it configures a round: the connected nodes."""

    def __init__(self, count: int):
        self.ids = list(range(1, count + 1))

    def get_node_ids(self):
        return self.ids


def _round_with(strategy, initial: dict, updates: list[dict], examples: list[int]):
    """One round through a real Flower strategy: configure, the clients' replies, aggregate."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    messages = list(strategy.configure_train(1, ArrayRecord(initial), ConfigRecord({"lr": 0.1}), _Nodes(3)))
    replies = [Message(RecordDict({"arrays": ArrayRecord(update), "metrics": MetricRecord(
        {"num-examples": n, "one": 1, "train_loss": 0.0, "client": i})}), reply_to=message)
        for i, (message, update, n) in enumerate(zip(messages, updates, examples, strict=True))]
    aggregated, _ = strategy.aggregate_train(1, replies)
    return aggregated.to_torch_state_dict()


def test_privacy_clips_each_update_and_accounts_epsilon(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from tuneforge.strategies.federated.aggregation import _flower_strategy, _privacy_spent

    for slot in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process is given by Flower
        monkeypatch.setattr(TaskIdentity, slot, 1)
    from tuneforge.strategies.params import FederatedParams

    initial = {"w": torch.zeros(4)}
    updates = [{"w": torch.tensor([3.0, 4.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 0.0, 0.3, 0.4])},
               {"w": torch.tensor([0.0, 0.0, 0.0, 10.0])}]
    plain = FederatedParams(clients=3)
    averaged = _round_with(_flower_strategy(plain.chosen(), plain, 3, 1e-3), initial, updates, [1, 1, 2])
    torch.testing.assert_close(averaged["w"], torch.tensor([0.75, 1.0, 0.075, 5.1]))  # weighted by examples
    clipped = FederatedParams(clients=3, privacy={"clipping_norm": 1.0})
    result = _round_with(_flower_strategy(clipped.chosen(), clipped, 3, 1e-3), initial, updates, [1, 1, 2])
    # each update clipped to norm 1 (the second, of norm 0.5, untouched), then averaged with equal weights
    torch.testing.assert_close(result["w"], torch.tensor([0.6, 0.8, 0.3, 1.4]) / 3)
    noisy = FederatedParams(clients=3, privacy={"clipping_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5})
    strategy = _flower_strategy(noisy.chosen(), noisy, 3, 1e-3)
    _round_with(strategy, initial, updates, [1, 1, 2])
    first = _privacy_spent(strategy)
    _round_with(strategy, initial, updates, [1, 1, 2])
    second = _privacy_spent(strategy)
    assert first["delta"] == 1e-5 and 0 < first["epsilon"] < second["epsilon"]  # spent grows round by round


def _federation(tmp_path, tiny_model_dir, rounds: int, **strategy) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    records = [{"prompt": f"Repeat {i}", "completion": f"{i}"} for i in range(24)]
    clients = [write_jsonl(tmp_path / f"hospital-{c}.jsonl", records[c::3]) for c in range(3)]
    return tiny_config(tmp_path, tiny_model_dir, method={"dropout": 0.0}, train={"batch_size": 4},
                       strategy={"name": "federated", "client_data": [str(c) for c in clients], "rounds": rounds,
                                 "local_steps": 1, "holdout": 0.25, **strategy})


@pytest.mark.slow
def test_a_restarted_server_resumes_after_the_last_aggregated_round(tmp_path, tiny_model_dir):
    """kill -9 of the server while it writes round 2's checkpoint; --resume continues after round 1 and ends
    on the uninterrupted federation's adapter (FedAdam: the server optimizer's moments are restored too)."""
    import yaml

    from tests.reliability.killing import kill_at
    from tuneforge.api import train

    whole = _federation(tmp_path / "whole", tiny_model_dir, 3, aggregation={"name": "fedadam", "eta": 0.01})
    reference = train(whole, quiet=True).run_dir
    config = _federation(tmp_path / "killed", tiny_model_dir, 3, aggregation={"name": "fedadam", "eta": 0.01})
    path = tmp_path / "killed" / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    killed = kill_at("tuneforge.engine.checkpoint:write_checkpoint", 2, path)
    assert killed.returncode != 0
    run_dir = tmp_path / "killed" / "run"
    assert sorted(p.name for p in (run_dir / "rounds").iterdir() if not p.name.startswith(".")) == ["step-00000001"]
    train(path, resume=True, quiet=True)
    ours = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    theirs = load_file(reference / "adapter" / "adapter_model.safetensors")
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    rounds = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "round"]
    assert rounds == [1, 2, 3]


def test_fedprox_mu_holds_a_client_to_the_global_weights(tmp_path, tiny_model_dir):
    """A client's local steps with Flower's proximal-mu: the larger μ, the less its weights leave the round's
    global weights (the term enters as the loop's penalty)."""
    from tuneforge.config import load_config
    from tuneforge.engine import checkpoint
    from tuneforge.engine.console import RunConsole
    from tuneforge.engine.session import open_session
    from tuneforge.models.load import load_tokenizer
    from tuneforge.runs.recipe import read_recipe
    from tuneforge.strategies.federated.client import _client_data, _train_locally
    from tuneforge.strategies.params import FederatedParams

    loaded = load_config(_federation(tmp_path, tiny_model_dir, 1))
    params = FederatedParams(**{k: v for k, v in loaded.run.strategy.model_dump().items() if k != "name"})
    session = open_session(loaded, read_recipe(loaded), RunConsole(silent=True))
    data = _client_data(loaded, params, 0, load_tokenizer(loaded.run.model))
    start = checkpoint.trainable_state(session.model)
    moved = {}
    for mu in (0.0, 1e4):
        checkpoint.restore_trainable(session.model, start, "test")
        losses = _train_locally(loaded, params.model_copy(update={"local_steps": 3}), session, data, 0, 1, 1e-2, mu)
        assert len(losses) == 3
        after = checkpoint.trainable_state(session.model)
        moved[mu] = sum(float((after[k] - start[k]).norm() ** 2) for k in start) ** 0.5
    assert moved[1e4] < 0.5 * moved[0.0]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Deployment:
    """A SuperLink and one SuperNode per client file on loopback, each SuperNode started with its own data (the
    server's config names no client data at all); `run` submits a tuneforge config with `flwr run`."""

    def __init__(self, tmp_path: Path, client_files: list[str], secure: Path | None = None,
                 intruders: list[str] = ()):
        """`secure`: the folder of `_credentials` (TLS, and only the SuperNodes whose keys are registered join);
        `intruders`: node configs of SuperNodes started besides the clients (with keys nobody registered)."""
        import os
        import subprocess
        import time

        self.bin = Path(sys.executable).parent
        self.env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}
        link = _free_port()
        (tmp_path / "flwr").mkdir()
        trust = f'root-certificates = "{secure / "ca.crt"}"' if secure else "insecure = true"
        (tmp_path / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\n{trust}\n')
        # the SuperLink keeps its state (the registered nodes, the runs) in a file, so that a restarted one knows
        # the SuperNodes that reconnect to it
        self.port, self.database = link, tmp_path / "flwr" / "superlink.db"
        tls = (["--ssl-ca-certfile", str(secure / "ca.crt"), "--ssl-certfile", str(secure / "server.pem"),
                "--ssl-keyfile", str(secure / "server.key"), "--enable-supernode-auth"] if secure else ["--insecure"])
        self.link = self._start("flower-superlink", *tls, "--port", str(link), "--database", str(self.database))
        time.sleep(4)
        for i in range(len(client_files) if secure else 0):  # what the federation's operator does, once
            subprocess.run([self.bin / "flwr", "supernode", "register", str(secure / f"node-{i}.pub"), "local"],
                           env=self.env, check=True, capture_output=True)

        def node(i: int, config: str) -> list[str]:
            return (["--root-certificates", str(secure / "ca.crt"), "--auth-supernode-private-key",
                     str(secure / f"node-{i}")] if secure else ["--insecure"]) + ["--node-config", config]

        configs = [f'partition-id={i} data-path="{path}"' for i, path in enumerate(client_files)] + list(intruders)
        self.nodes = [self._start("flower-supernode", "--superlink", f"127.0.0.1:{link}", "--port", str(_free_port()),
                                  *node(i, config)) for i, config in enumerate(configs)]

    def _start(self, *command: str):
        import subprocess

        return subprocess.Popen([self.bin / command[0], *command[1:]], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def run(self, config: Path, resume: bool = False):
        import subprocess

        app = subprocess.run([sys.executable, "-m", "tuneforge.strategies.flower_app"], capture_output=True,
                             text=True, check=True).stdout.strip()
        return subprocess.Popen([self.bin / "flwr", "run", app, "local", "--stream", "--run-config",
                                 f'config="{config}"' + (" resume=true" if resume else "")], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def restart_link(self) -> None:
        """kill -9 of the SuperLink and the ServerApp it runs, and a new SuperLink on the same address (the
        SuperNodes keep trying to reach it and connect again by themselves)."""
        import time

        self.kill(self.link)
        self.link.wait()
        self.link = self._start("flower-superlink", "--insecure", "--port", str(self.port), "--database",
                                str(self.database))
        time.sleep(6)

    def kill(self, process) -> None:
        import os
        import signal

        os.killpg(process.pid, signal.SIGKILL)  # the SuperNode and the ClientApp processes it started

    def close(self) -> None:
        for process in [self.link, *self.nodes]:
            with contextlib.suppress(ProcessLookupError):
                self.kill(process)


def _credentials(folder: Path, nodes: int) -> Path:
    """A certificate authority, the SuperLink's TLS certificate for 127.0.0.1 signed by it, and an EC key pair per
    SuperNode (OpenSSH encoding, as Flower reads them): what an operator makes once for a federation."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: x509.Name, signer, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = certificate("test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]), ca_key, True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(certificate("localhost", server_key, ca.subject, ca_key, False)
                                        .public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(pem(server_key))
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        (folder / f"node-{i}").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.OpenSSH,
                                                             serialization.NoEncryption()))
        (folder / f"node-{i}").chmod(0o600)
        (folder / f"node-{i}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                              serialization.PublicFormat.OpenSSH))
    return folder


def _deployed_config(tmp_path: Path, simulated: dict, **strategy) -> Path:
    import yaml

    deployed = {**simulated, "output": {"dir": str(tmp_path / "deployed"), "tensorboard": False},
                "strategy": {"name": "federated", "clients": len(simulated["strategy"]["client_data"]),
                             "split": "iid", "rounds": simulated["strategy"]["rounds"], "local_steps": 1,
                             "holdout": 0.25, **strategy}}
    config = tmp_path / "deployed.yaml"
    config.write_text(yaml.safe_dump(deployed))
    return config


@pytest.mark.slow
def test_a_deployment_of_real_processes_gives_the_simulations_global_model(tmp_path, tiny_model_dir):
    """`flwr run` on a SuperLink and three SuperNodes: the same adapter as the simulation of the same clients
    (fp32; the processes' thread counts differ, hence a tolerance)."""
    from tuneforge.api import train

    simulated = _federation(tmp_path / "sim", tiny_model_dir, 2)
    reference = train(simulated, quiet=True).run_dir
    config = _deployed_config(tmp_path, simulated)
    deployment = _Deployment(tmp_path, simulated["strategy"]["client_data"])
    try:
        output = deployment.run(config).communicate(timeout=600)[0]
    finally:
        deployment.close()
    assert "round 2/2" in output, output[-3000:]
    ours = load_file(tmp_path / "deployed" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(reference / "adapter" / "adapter_model.safetensors")
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5)


def _wait_for_round(metrics: Path, timeout: float = 300) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and '"round"' in metrics.read_text()):
        time.sleep(0.5)


@pytest.mark.slow
def test_a_restarted_superlink_resumes_the_deployed_federation(tmp_path, tiny_model_dir):
    """kill -9 of the SuperLink (with the ServerApp it runs) once round 1 is aggregated; a new SuperLink on the
    same address, the SuperNodes reconnect by themselves, `flwr run ... resume=true` continues after the last
    aggregated round and ends on the uninterrupted simulation's adapter."""
    from tuneforge.api import train

    simulated = _federation(tmp_path / "sim", tiny_model_dir, 3)
    reference = train(simulated, quiet=True).run_dir
    config = _deployed_config(tmp_path, simulated)
    deployment = _Deployment(tmp_path, simulated["strategy"]["client_data"])
    metrics = tmp_path / "deployed" / "metrics.jsonl"
    try:
        first = deployment.run(config)
        _wait_for_round(metrics)
        deployment.restart_link()
        first.communicate(timeout=60)
        output = deployment.run(config, resume=True).communicate(timeout=600)[0]
    finally:
        deployment.close()
    assert "resuming after round" in output and "round 3/3" in output, output[-3000:]
    rounds = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"round"' in line]
    assert rounds == [1, 2, 3]
    ours = load_file(tmp_path / "deployed" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(reference / "adapter" / "adapter_model.safetensors")
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_client_process_killed_mid_federation_does_not_stop_it(tmp_path, tiny_model_dir):
    """kill -9 of a SuperNode (and its ClientApp) after round 1: Flower answers for it with an error once its
    heartbeat lapses, the round aggregates the two that answered and names the missing one, and the next round
    goes on with the clients still connected (strategy.min_clients: 2)."""
    simulated = _federation(tmp_path / "sim", tiny_model_dir, 3)
    config = _deployed_config(tmp_path, simulated, min_clients=2)
    deployment = _Deployment(tmp_path, simulated["strategy"]["client_data"])
    metrics = tmp_path / "deployed" / "metrics.jsonl"
    try:
        flwr = deployment.run(config)
        _wait_for_round(metrics)
        deployment.kill(deployment.nodes[2])
        output = flwr.communicate(timeout=600)[0]
    finally:
        deployment.close()
    assert "round 3/3" in output, output[-3000:]
    rounds = [json.loads(line) for line in metrics.read_text().splitlines() if '"round"' in line]
    assert rounds[0]["clients"] == ["hospital-0", "hospital-1", "hospital-2"]
    assert rounds[1]["clients"] == ["hospital-0", "hospital-1"]
    assert len(rounds[1]["missing"]) == 1 and rounds[1]["missing"][0].startswith("hospital-2 (")
    assert rounds[2]["clients"] == ["hospital-0", "hospital-1"]
    assert (tmp_path / "deployed" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_server_admits_only_the_clients_it_was_told_about():
    """Issue 30, finding 1: a third SuperNode that claimed an admitted client's name (and 200 poisoned records)
    joined round 1 and carried 93% of FedAvg's weight; `partition-id=-1` took the last client's name. Now a node is
    admitted once, as the partition and name it claims when no connected node holds them; a colliding claim stops
    the federation, a claim outside the federation is refused, and a reply that reports other examples than the
    client was admitted with is not aggregated."""
    from types import SimpleNamespace

    from tuneforge.errors import TrainingError
    from tuneforge.strategies.federated.server import _Roster, _Server
    from tuneforge.strategies.params import FederatedParams

    said: list[str] = []
    run = SimpleNamespace(loaded=None, console=SimpleNamespace(info=said.append), dir=None)
    server = _Server(run, FederatedParams(clients=2), None, None, None, ["t1", "t2"], (0, 0), {}, 0)

    def reply(node: int, client: dict | None = None, metrics: dict | None = None):
        return SimpleNamespace(has_error=lambda: client is None, error=SimpleNamespace(reason="no data"),
                               content={"client": client or {}, "metrics": metrics or {}},
                               metadata=SimpleNamespace(reply_to_message_id=f"m{node}", src_node_id=node))

    server.destinations = {f"m{node}": node for node in range(10, 20)}
    connected = {11, 12, 13, 14, 16}
    server._admit_one(reply(11, {"name": "t1", "partition": 0, "examples": 20}), connected)
    server._admit_one(reply(12, {"name": "t2", "partition": 1, "examples": 20}), connected)
    with pytest.raises(TrainingError, match=r"(?s)SuperNode 13 says it is client 't1'.*SuperNode 11.*authentication"):
        server._admit_one(reply(13, {"name": "t1", "partition": 0, "examples": 200}), connected)
    with pytest.raises(TrainingError, match=r"SuperNode 13 says it is client 't3' \(partition 1\)"):
        server._admit_one(reply(13, {"name": "t3", "partition": 1, "examples": 200}), connected)
    server._admit_one(reply(14, {"name": "t2", "partition": -1, "examples": 200}), connected)
    server._admit_one(reply(16), connected)  # could not say who it is
    server._admit_one(reply(17, {"name": 5, "partition": "0"}), connected)  # a malformed claim
    assert server.nodes == {11: "t1", 12: "t2"} and set(server.refused) == {14, 16, 17}
    assert len(said) == 3 and said[0].startswith("refused SuperNode 14: node 14 claims partition -1")

    class Grid:
        def get_node_ids(self):
            return sorted(connected)

    assert _Roster(Grid(), server.nodes).get_node_ids() == [11, 12]  # Flower's strategy is shown these only
    kept, refused = server._as_introduced([
        reply(11, {"name": "t1"}, {"num-examples": 20}), reply(12, {"name": "t2"}, {"num-examples": 200})])
    assert [server._node_of(r) for r in kept] == [11]
    assert refused == ["t2 (reported 200 training examples, 20 when it was admitted: not aggregated)"]
    # t1's SuperNode reconnects under a new id: the client is the new node, the old one forgotten
    server._admit_one(reply(15, {"name": "t1", "partition": 0, "examples": 20}), {12, 15})
    assert server.nodes == {12: "t2", 15: "t1"}
    assert server.roster()["roster"] == {"t1": {"node": 15, "partition": 0, "examples": 20},
                                         "t2": {"node": 12, "partition": 1, "examples": 20}}


@pytest.mark.parametrize("partition", ["-1", "2", "x"])
def test_a_client_outside_the_federation_says_so(partition):
    from tuneforge.strategies.federated.client import _Who
    from tuneforge.strategies.params import FederatedParams

    with pytest.raises(ConfigError, match=r"partition-id=.*not one of this federation's clients 0 to 1"):
        _Who.of({"partition-id": partition}, FederatedParams(clients=2))
    assert _Who.of({"partition-id": 1}, FederatedParams(clients=2)).name == "client-1"


def _poisoned(tmp_path: Path) -> str:
    """200 records of what an intruder would like the model to say."""
    path = tmp_path / "poison.jsonl"
    write_jsonl(path, [{"prompt": f"Repeat {i}", "completion": "EVIL"} for i in range(200)])
    return f'partition-id=0 data-path="{path}" name="hospital-0"'


@pytest.mark.slow
def test_with_tls_and_supernode_authentication_only_registered_supernodes_join(tmp_path, tiny_model_dir):
    """Issue 30, finding 1, the guide's multi-machine recipe: the SuperLink on TLS with SuperNode authentication,
    the clients' SuperNodes registered by their public keys; a third SuperNode with a key nobody registered, claiming
    client hospital-0 with 200 poisoned records, never joins: the federation trains on the two it was told about."""
    simulated = _federation(tmp_path / "sim", tiny_model_dir, 2)
    clients = simulated["strategy"]["client_data"][:2]
    simulated["strategy"]["client_data"] = clients
    config = _deployed_config(tmp_path, simulated)
    deployment = _Deployment(tmp_path, clients, secure=_credentials(tmp_path / "credentials", 3),
                             intruders=[_poisoned(tmp_path)])
    try:
        output = deployment.run(config).communicate(timeout=600)[0]
    finally:
        deployment.close()
    assert "round 2/2" in output, output[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "deployed" / "metrics.jsonl").read_text().splitlines()
              if '"round"' in line]
    assert [row["clients"] for row in rounds] == [["hospital-0", "hospital-1"]] * 2
    roster = json.loads((tmp_path / "deployed" / "run.json").read_text())["roster"]
    assert sorted(roster) == ["hospital-0", "hospital-1"] and {c["examples"] for c in roster.values()} == {6}
    assert roster["hospital-0"]["node"] == rounds[0]["nodes"]["hospital-0"]


@pytest.mark.slow
def test_without_authentication_a_supernode_claiming_a_client_stops_the_federation(tmp_path, tiny_model_dir):
    """Issue 30, finding 1, as it was found (an insecure SuperLink): the third SuperNode that claims hospital-0 is
    not trained on; the federation stops before any round, naming both SuperNodes and the fix."""
    simulated = _federation(tmp_path / "sim", tiny_model_dir, 1)
    clients = simulated["strategy"]["client_data"][:2]
    simulated["strategy"]["client_data"] = clients
    config = _deployed_config(tmp_path, simulated)
    deployment = _Deployment(tmp_path, clients, intruders=[_poisoned(tmp_path)])
    try:
        output = deployment.run(config).communicate(timeout=600)[0]
    finally:
        deployment.close()
    assert "says it is client 'hospital-0'" in output and "authentication" in output, output[-3000:]
    assert not (tmp_path / "deployed" / "rounds").exists() or not any((tmp_path / "deployed" / "rounds").iterdir())
    assert json.loads((tmp_path / "deployed" / "run.json").read_text())["status"] == "failed"


def test_a_split_that_cannot_be_made_stops_the_simulation_before_ray_or_the_run_directory(tmp_path, tiny_model_dir):
    """Issue 30, finding 11: 30 clients over 24 records failed in every client, after Ray had started, and left the
    run directory behind. A process of its own checks the split first (the server's never opens data.train)."""
    import time

    from tuneforge.api import train

    config = _federation(tmp_path, tiny_model_dir, 1)
    config["strategy"] = {**config["strategy"], "clients": 30}
    del config["strategy"]["client_data"]
    config["data"]["train"] = [str(p) for p in sorted(tmp_path.glob("hospital-*.jsonl"))]
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"24 training records cannot be split among 30 clients"):
        train(config, quiet=True)
    assert time.perf_counter() - started < 60 and not (tmp_path / "run").exists()


def test_a_federation_needs_no_data_train_of_its_own_and_other_strategies_do(tmp_path, tiny_model_dir):
    """Issue 30, finding 10: the deployed ServerApp demanded data.train, which it never reads."""
    from typer.testing import CliRunner

    from tuneforge.api import load
    from tuneforge.cli import app
    from tuneforge.strategies import strategy_for

    config = _federation(tmp_path, tiny_model_dir, 1)
    config["data"] = {"test": config["data"]["test"]}  # the clients bring their data: client_data
    loaded = load(config)
    assert strategy_for(loaded)[0].name == "federated" and loaded.run.data.train == []
    single = {**config, "strategy": {"name": "single"}}
    with pytest.raises(ConfigError, match=r"missing required key 'data.train'"):
        strategy_for(load(single))
    import yaml

    (tmp_path / "single.yaml").write_text(yaml.safe_dump(single))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "single.yaml")])
    assert result.exit_code == 2 and "missing required key 'data.train'" in result.output


def test_a_deployed_apps_user_error_is_logged_as_its_message(tmp_path):
    """Issue 30, finding 10: the deployed ServerApp's config error came out as Flower's traceback."""
    import io
    import logging
    from types import SimpleNamespace

    from flwr.common.logger import log

    from tuneforge.strategies.federated.deploy import deployed_config

    (tmp_path / "bad.yaml").write_text("model: default\ndata:\n  train: a.jsonl\ntrain:\n  lr: -1\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("flwr").addHandler(handler)
    try:
        with pytest.raises(ConfigError) as raised:
            deployed_config(SimpleNamespace(run_config={"config": str(tmp_path / "bad.yaml")}))
        log(logging.ERROR, "%s raised an exception", "ServerApp", exc_info=raised.value)  # as Flower's runner does
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    said = stream.getvalue()
    assert "error: " in said and "bad.yaml:5: 'train.lr' = -1" in said and "Traceback" not in said
