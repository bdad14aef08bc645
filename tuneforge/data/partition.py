"""Splitting one dataset among federated clients, by Flower Datasets' partitioners: IID (a seeded shuffle cut
into equal shares) or non-IID by a Dirichlet(α) over each record's task, the standard way to simulate clients
whose data differ (small α: each client holds mostly one or two tasks)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tuneforge.errors import ConfigError


def split_clients(tasks: Sequence[str | None], clients: int, how: str, alpha: float, min_size: int, seed: int,
                  where: str) -> list[list[int]]:
    """The record indices of each client, every record in exactly one client."""
    try:
        from datasets import Dataset
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
    except ImportError:
        raise ConfigError(f"{where}: a federated split needs Flower Datasets\n  fix: pip install "
                          "'tuneforge[federated]'") from None
    if len(tasks) < clients:
        raise ConfigError(f"{where}: {len(tasks)} training records cannot be split among {clients} clients\n  fix: "
                          "lower strategy.clients or give more data")
    rows = list(range(len(tasks)))
    random.Random(seed).shuffle(rows)  # the IID partitioner cuts contiguous shards
    if how == "dirichlet":
        if len(set(tasks)) < 2:
            raise ConfigError(f"{where}: split: dirichlet deals each client a mixture of tasks, but the records "
                              "name fewer than two\n  fix: name a task in each data.train entry, or use split: iid")
        partitioner = DirichletPartitioner(num_partitions=clients, partition_by="task", alpha=alpha,
                                           min_partition_size=min_size, seed=seed)
    else:
        partitioner = IidPartitioner(num_partitions=clients)
    partitioner.dataset = Dataset.from_dict({"task": [tasks[r] or "" for r in rows], "row": rows})
    try:
        return [sorted(partitioner.load_partition(i)["row"]) for i in range(clients)]
    except ValueError as exc:  # no draw gave every client min_size records
        raise ConfigError(f"{where}: {exc}\n  fix: lower strategy.min_client_examples or strategy.clients, or raise "
                          "strategy.alpha") from None
