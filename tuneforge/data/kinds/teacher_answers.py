"""A teacher's answers (`teacher_answers`: sequence-level distillation): each record's prompt with the answer a
teacher writes for it before training (the record's own answer is kept for the test data's scores)."""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.config import LoadedConfig
from tuneforge.data.kinds.base import DataKind, require_prompts


class TeacherAnswers(DataKind):
    name = "teacher_answers"
    summary = "prompts whose answers a teacher writes once before training"

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        require_prompts(records, objective, "trains on a teacher's answers to the prompts, so each record needs a "
                        "prompt (its answer is scored on the test data)")

    def answered(self, records: list, teacher: Callable[[list], list]) -> list:
        return teacher(records)


KIND = TeacherAnswers()
