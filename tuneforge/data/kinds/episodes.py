"""Meta-learning's episodes (`episodes`): plain examples of many tasks, trained an episode at a time — a task's
support batches for the inner loop and its query batch (`data.episodes`). Read, checked and encoded as `sft`
records; batched an episode per micro-batch."""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.data.episodes import Episode, collate_episode
from tuneforge.data.kinds.base import DataKind
from tuneforge.data.kinds.sft import Sft


class Episodes(Sft):
    name = "episodes"
    summary = "many tasks' conversations, trained an episode (support and query batches of one task) at a time"
    streams = False

    def collate(self, examples: Sequence, pad_id: int, packed: bool = False) -> dict:
        if not isinstance(examples, Episode):
            raise TypeError("the episodes kind batches meta-learning episodes (data.episodes.Episode)")
        return collate_episode(examples, super().collate, pad_id, packed)


KIND: DataKind = Episodes()
