"""Federated against centralised and local-only training on the same data (`examples/federated_lora.yaml`:
the four bundled tasks dealt to 10 clients by a Dirichlet(0.5) over the task).

    python -m bench.federated            # writes bench/results/federated/report.md (+ global.png) and prints it
    python -m bench.federated --quick    # 3 rounds instead of the example's 6

- federated: the example as it is, in Flower's simulation;
- centralised: all clients' training data pooled (what is left after each client's hold-out), at the same
  batch size, learning rate and schedule, for rounds x local_steps steps (the global model's sequential steps)
  and for rounds x sampled clients x local_steps steps (the same total local steps and examples as the whole
  federation, the stricter comparison);
- local-only: each client alone on its own training data for the local steps it takes in the federation
  (rounds x fraction x local_steps: the same compute as its share).

Every run is scored on the same global test set (data.test, 25 examples a task). `--reuse` keeps the runs a
previous invocation finished (their eval.json) and runs only what is missing.

    python -m bench.federated --variant NAME   # one of VARIANTS: what else was tried for the same 180 local steps

prints the variant's score (bench/results/federated/variants/NAME); the table in bench/RESULTS.md has them.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml

from bench.common import machine_line
from tuneforge.api import train
from tuneforge.config import load_config
from tuneforge.data.kinds import read_splits
from tuneforge.data.partition import split_clients
from tuneforge.objectives import get_objective

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "federated_lora.yaml"


def client_files(data: dict, out: Path) -> list[Path]:
    """Each client's training records (its share less its hold-out, as the federated client trains on) as a file:
    the local-only runs train on these, and the multi-process deployment can give one to each client."""
    loaded = load_config(data)
    cfg, strategy = loaded.run, data["strategy"]
    everything = read_splits(loaded, get_objective("sft"), [], {"train": cfg.data.train})["train"]
    shares = split_clients([e.task for e in everything], strategy["clients"], strategy["split"], strategy["alpha"],
                           strategy.get("min_client_examples", 5), cfg.train.seed, "strategy")
    files = []
    for index, share in enumerate(shares):
        records = [everything[i] for i in share]
        random.Random(cfg.train.seed + index).shuffle(records)  # as the client does before its hold-out cut
        kept = records[round(len(records) * strategy.get("holdout", 0.2)):]
        path = out / "clients" / f"client-{index}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in kept))
        files.append(path)
    return files


def single_run(data: dict, train_files: list[Path], steps: int, out: Path, reuse: bool) -> dict:
    if reuse and (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())["after"]
    config = {**data, "strategy": {"name": "single"},
              "data": {**data["data"], "train": [{"path": str(p)} for p in train_files]},
              "train": {**data["train"], "max_steps": steps}, "output": {"dir": str(out), "overwrite": True}}
    return train(config, quiet=True).eval_after


# the example's federation changed in one way each (strategy / train keys), or a centralised run of the pooled
# client data (`centralised`: train keys and steps), all for 180 local steps in all
VARIANTS: dict[str, dict] = {
    "all-clients": {"strategy": {"fraction": 1.0, "rounds": 6, "local_steps": 3}},
    "all-clients-fedavgm": {"strategy": {"fraction": 1.0, "rounds": 6, "local_steps": 3,
                                         "aggregation": {"name": "fedavgm", "momentum": 0.6}},
                            "train": {"schedule": "constant"}},
    "all-clients-server-lr-5": {"strategy": {"fraction": 1.0, "rounds": 6, "local_steps": 3,
                                             "aggregation": {"name": "fedavgm", "server_lr": 5.0}},
                                "train": {"schedule": "constant"}},
    "all-clients-lr-5e-3": {"strategy": {"fraction": 1.0, "rounds": 6, "local_steps": 3},
                            "train": {"lr": 5e-3, "schedule": "constant"}},
    "one-client-a-round": {"strategy": {"fraction": 0.1, "rounds": 30, "local_steps": 6}},
    "uniform": {"strategy": {"sampling": "uniform"}},  # the example before sampling: examples (85.0)
    "one-client-a-round-by-examples": {"strategy": {"fraction": 0.1, "rounds": 30, "local_steps": 6,
                                                    "sampling": "examples", "client_eval_every": 10}},
    "centralised-batch-40": {"centralised": 18, "train": {"batch_size": 40}},
    "centralised-batch-40-lr-6e-3": {"centralised": 18, "train": {"batch_size": 40, "lr": 6e-3,
                                                                   "schedule": "constant"}},
}


def variant(name: str, data: dict, out: Path) -> float:
    change = VARIANTS[name]
    data = {**data, "train": {**data["train"], **change.get("train", {})}}
    where = out / "variants" / name
    if "centralised" in change:
        files = sorted((out / "clients").glob("client-*.jsonl")) or client_files(data, out)
        return single_run(data, files, change["centralised"], where, reuse=False)["exact_match"]
    data["strategy"] = {**data["strategy"], **change["strategy"]}
    return train({**data, "output": {"dir": str(where), "overwrite": True}}, quiet=True).eval_after["exact_match"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep the runs a previous invocation finished")
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / ("federated-quick" if args.quick else "federated")
    data = yaml.safe_load(CONFIG.read_text())
    if args.variant:
        print(f"{args.variant}: exact match {variant(args.variant, data, out):.1f}")
        return
    if args.quick:
        data["strategy"]["rounds"] = 3
    steps = data["strategy"]["rounds"] * data["strategy"]["local_steps"]
    sampled = max(1, round(data["strategy"].get("fraction", 1.0) * data["strategy"]["clients"]))
    timings = {}
    started = time.perf_counter()
    fed_dir = out / "runs" / "federated"
    if not (args.reuse and (fed_dir / "eval.json").is_file()):
        train({**data, "output": {"dir": str(fed_dir), "overwrite": True}}, quiet=True)
        timings["federated"] = time.perf_counter() - started
    fed = json.loads((fed_dir / "eval.json").read_text())["after"]
    rows = [json.loads(line) for line in (fed_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if r["kind"] == "round"]
    files = client_files(data, out)
    central = {}
    for label, total in (("same steps", steps), ("same examples", steps * sampled)):
        started = time.perf_counter()
        central[label] = single_run(data, files, total, out / "runs" / f"centralised-{total}", args.reuse)
        timings[f"centralised {total} steps"] = time.perf_counter() - started
    local = {}
    started = time.perf_counter()
    own = steps * sampled // len(files)  # the local steps each client takes in the federation, on average
    for path in files:
        local[path.stem] = single_run(data, [path], own, out / "runs" / f"local-{path.stem}", args.reuse)
    timings["local-only (all)"] = time.perf_counter() - started
    write_report(out, data, fed, central, local, rounds, timings, [len(p.read_text().splitlines()) for p in files],
                 sampled)


def write_report(out: Path, data: dict, fed: dict, centrals: dict, local: dict, rounds: list[dict],
                 timings: dict, sizes: list[int], sampled: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    central = centrals["same examples"]  # the stricter comparison
    tasks = sorted(central.get("tasks", {}))
    strategy = data["strategy"]
    steps = strategy["rounds"] * strategy["local_steps"]

    def line(name: str, scores: dict) -> str:
        per_task = " | ".join(f"{scores['tasks'][t]['exact_match']:.0f}" for t in tasks)
        return f"| {name} | {scores['exact_match']:.1f} | {per_task} |"

    best_local = max(v["exact_match"] for v in local.values())
    share = fed["exact_match"] / central["exact_match"] if central["exact_match"] else float("nan")
    sent = sum(r["bytes_exchanged"] for r in rounds)
    full = sum(r["bytes_full_model"] for r in rounds)
    lines = [
        "# Federated LoRA against centralised and local-only training", "", machine_line(), "",
        f"`python -m bench.federated`: `examples/federated_lora.yaml` ({strategy['clients']} clients, Dirichlet "
        f"α {strategy['alpha']} over the task, {strategy['rounds']} rounds of {sampled} clients (sampling "
        f"{strategy.get('sampling', 'uniform')}) x "
        f"{strategy['local_steps']} local steps, {strategy['aggregation']['name']}, LoRA r 16 on the default model); "
        f"every run scored by exact match on the same global test set (25 examples a task). Client training sets: "
        f"{sizes} records.", "",
        f"Federated reaches **{100 * share:.0f}%** of the score of centralised training on the pooled data in the "
        f"same total number of local steps ({steps * sampled}: {fed['exact_match']:.1f} against "
        f"{central['exact_match']:.1f}; {100 * fed['exact_match'] / centrals['same steps']['exact_match']:.0f}% of "
        f"centralised training in the global model's {steps} sequential steps, "
        f"{centrals['same steps']['exact_match']:.1f}) and "
        f"{'beats' if fed['exact_match'] > best_local else 'does not beat'} every local-only client (best "
        f"{best_local:.1f}); it exchanged {sent / 2**20:.0f} MiB in all, {100 * sent / full:.1f}% of what "
        f"full-model exchange would ({full / 2**20:.0f} MiB).", "",
        "| run | mean | " + " | ".join(tasks) + " |", "| --- | --- | " + " | ".join("---" for _ in tasks) + " |",
        line("federated", fed), line(f"centralised, {steps * sampled} steps (same total local steps)", central),
        line(f"centralised, {steps} steps (same sequential steps)", centrals["same steps"]),
        *(line(f"local-only {name}, {steps * sampled // len(local)} steps", scores)
          for name, scores in sorted(local.items(), key=lambda item: int(item[0].rsplit("-", 1)[1]))), "",
        "Per round (global model on the test set; clients' mean score on their own held-out data):", "",
        "| round | clients | global | clients' held-out mean | missing | MiB exchanged | s |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        held = [s["exact_match"] for s in r["client_scores"].values() if "exact_match" in s]
        lines.append(f"| {r['step']} | {', '.join(c.removeprefix('client-') for c in r['clients'])} | "
                     f"{r['global']['exact_match']:.1f} | "
                     f"{f'{sum(held) / len(held):.1f}' if held else '-'} | {', '.join(r['missing']) or '-'} | "
                     f"{r['bytes_exchanged'] / 2**20:.0f} | {r['wall_s']:.0f} |")
    ran = {k: v for k, v in timings.items() if v >= 1}  # a run kept with --reuse took no time now
    wall = sum(r["wall_s"] for r in rounds)  # a resumed run's run.json times only what ran after the resume
    ran = {"federated rounds (their rows' sum)": wall, **{k: v for k, v in ran.items() if k != "federated"}}
    lines += ["", "Wall time: " + (", ".join(f"{k} {v:.0f} s" for k, v in ran.items()) or "all runs kept (--reuse)"),
              "", "![global](global.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rounds], [r["global"]["exact_match"] for r in rounds], marker="o",
              label="federated (global model)")
    axis.axhline(central["exact_match"], color="k", linestyle="--", label="centralised (same total steps)")
    axis.axhline(centrals["same steps"]["exact_match"], color="grey", linestyle="-.",
                 label="centralised (same sequential steps)")
    axis.axhline(best_local, color="r", linestyle=":", label="best local-only client")
    axis.set_xlabel("round")
    axis.set_ylabel("exact match (global test)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "global.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
