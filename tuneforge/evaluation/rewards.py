"""Reward functions for online RL and held-out reward: verifiers and shaping terms, built in or the user's own.

A reward function takes the sampled completions, the references (the record's answer, or None) and the
prompts (each record's last user message), all as text, and returns one float per completion:

    def my_reward(completions: list[str], references: list[str | None], prompts: list[str]) -> list[float]

Config names a built-in (`exact_match`) or a function by dotted path (`mypackage.rewards.my_reward` or
`mypackage.rewards:my_reward`), each with a weight; a completion's reward is the weighted sum. A trained
reward model serves as a reward too (`{model: RUN_DIR}`, `runs.trained.RewardModelScore`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence

from tuneforge.errors import ConfigError

RewardFn = Callable[[list[str], list[str | None], list[str]], list[float]]

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(".!").lower().split())


def exact_match(completions: list[str], references: list[str | None], prompts: list[str]) -> list[float]:
    """1 where the completion is the reference (case, surrounding space and a final period aside), else 0."""
    return [float(ref is not None and _normalise(c) == _normalise(ref)) for c, ref in zip(completions, references,
                                                                                           strict=True)]


def number_match(completions: list[str], references: list[str | None], prompts: list[str]) -> list[float]:
    """1 where the completion's last number equals the reference's number (a lenient verifier for arithmetic
    and word problems: "13 + 14 = 27" scores for 27), else 0."""
    scores = []
    for completion, ref in zip(completions, references, strict=True):
        found, wanted = NUMBER.findall(completion), NUMBER.findall(ref or "")
        scores.append(float(bool(found) and bool(wanted) and float(found[-1]) == float(wanted[-1])))
    return scores


def number_only(completions: list[str], references: list[str | None], prompts: list[str]) -> list[float]:
    """A format check: 1 where the whole completion is a single number, else 0."""
    return [float(NUMBER.fullmatch(c.strip().rstrip(".")) is not None) for c in completions]


def length_penalty(completions: list[str], references: list[str | None], prompts: list[str]) -> list[float]:
    """Minus the completion's length in words over 100 (a gentle push toward short answers)."""
    return [-len(c.split()) / 100 for c in completions]


BUILT_IN: dict[str, RewardFn] = {"exact_match": exact_match, "number_match": number_match,
                                 "number_only": number_only, "length_penalty": length_penalty}


def resolve_reward(name: str, where: str) -> RewardFn:
    """A built-in by name, or a function by dotted path; a clear error naming the config key otherwise."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, sep, attribute = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{where}: unknown reward '{name}'\n  fix: use one of {', '.join(BUILT_IN)}, or a dotted "
                          "path to your function such as mypackage.rewards.score")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import '{module_name}' for reward '{name}': {exc}\n  fix: check the "
                          "dotted path, and that the module is importable (installed, or on PYTHONPATH)") from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ConfigError(f"{where}: '{module_name}' has no function '{attribute}'\n  fix: check the reward's "
                          "dotted path")
    return fn


def score(fns: Sequence[tuple[str, RewardFn, float]], completions: list[str], references: list[str | None],
          prompts: list[str]) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted total per completion, and each function's own scores (for logging)."""
    parts: dict[str, list[float]] = {}
    totals = [0.0] * len(completions)
    for name, fn, weight in fns:
        values = [float(v) for v in fn(list(completions), list(references), list(prompts))]
        if len(values) != len(completions):
            raise ValueError(f"reward '{name}' returned {len(values)} scores for {len(completions)} completions")
        parts[name] = values
        totals = [t + weight * v for t, v in zip(totals, values, strict=True)]
    return totals, parts
