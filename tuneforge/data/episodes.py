"""Episodes, meta-learning's training data: at each outer step a meta-batch of tasks, and for each task a support
set (the inner loop's batches) and a query set drawn from that task's examples, disjoint. `Episodes` plans itself
as the loop asks of any training data (`window`, `total_steps`, ...): the draw is a function of the seed and the
step alone, so a resumed run trains the very episodes the killed one would have."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tuneforge.config import TrainConfig
from tuneforge.data.batching import count_label_tokens
from tuneforge.data.dataset import TrainExample


@dataclass(frozen=True)
class Episode:
    """One task's share of an outer step: `support` is the inner loop's batches, `query` the batch its adapted
    weights are judged on. Iterating gives every example (support first), as the loop reads a micro-batch."""

    task: str
    support: tuple[tuple[TrainExample, ...], ...]
    query: tuple[TrainExample, ...]

    def __iter__(self) -> Iterator[TrainExample]:
        yield from (e for batch in self.support for e in batch)
        yield from self.query

    def __len__(self) -> int:
        return sum(map(len, self.support)) + len(self.query)


@dataclass(frozen=True)
class Episodes:
    """The meta-training tasks' encoded examples and the episode shape: `meta_batch` tasks per outer step, each
    with `inner_steps` support batches of `support` examples and a query batch of `query` examples."""

    tasks: dict[str, list[TrainExample]]
    meta_batch: int
    inner_steps: int
    support: int
    query: int

    def plan(self, cfg: TrainConfig) -> EpisodePlan:
        return EpisodePlan(self, cfg.seed)

    def __len__(self) -> int:
        return sum(map(len, self.tasks.values()))

    def __iter__(self) -> Iterator[TrainExample]:
        """Every example, task by task (what identifies the run's data)."""
        return (e for name in sorted(self.tasks) for e in self.tasks[name])

    def too_small(self) -> list[str]:
        """The tasks with fewer examples than one episode draws (support and query are drawn without repeats)."""
        drawn = self.inner_steps * self.support + self.query
        return [name for name, examples in self.tasks.items() if len(examples) < drawn]


class EpisodePlan:
    """Which episodes make up each outer step (the loop's window: one micro-batch per task)."""

    def __init__(self, episodes: Episodes, seed: int):
        self.episodes, self.seed = episodes, seed
        drawn = episodes.meta_batch * (episodes.inner_steps * episodes.support + episodes.query)
        self.steps_per_epoch = max(1, math.ceil(len(episodes) / drawn))  # as many examples as the tasks hold

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, round(epochs * self.steps_per_epoch))

    def window(self, step: int) -> list[Episode]:
        shape, rng = self.episodes, random.Random(f"episodes/{self.seed}/{step}")
        out = []
        for task in rng.sample(sorted(shape.tasks), shape.meta_batch):
            examples = shape.tasks[task]
            drawn = rng.sample(range(len(examples)), shape.inner_steps * shape.support + shape.query)
            support = tuple(tuple(examples[i] for i in drawn[s * shape.support:(s + 1) * shape.support])
                            for s in range(shape.inner_steps))
            out.append(Episode(task, support, tuple(examples[i] for i in drawn[shape.inner_steps * shape.support:])))
        return out

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def position(self) -> dict | None:
        return None  # the episodes are a function of the step

    def restore(self, step: int, position: dict | None) -> None:
        """Nothing to restore: step `step`'s episodes are drawn from the seed and the step."""


def collate_episode(episode: Episode, collate, pad_id: int, packing: bool) -> dict:
    """An episode as the loop moves it: its support and query batches collated by the task data's own `collate`,
    and the counts a window's loss context reads (an episode is one example of the meta-batch; its label tokens
    are its query's)."""
    support = [collate(list(batch), pad_id, packing) for batch in episode.support]
    query = [collate(list(episode.query), pad_id, packing)]
    return {"support": support, "query": query, "num_examples": torch.tensor(1),
            "num_label_tokens": torch.tensor(sum(count_label_tokens(b) for b in query)),
            "num_tokens": torch.tensor(sum(int(b["num_tokens"]) for b in [*support, *query]))}


