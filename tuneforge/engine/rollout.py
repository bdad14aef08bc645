"""Rollouts for online objectives (grpo, rloo, ppo): sample a group of completions per prompt with the current
policy, score them with the reward functions, and turn them into ordinary training sequences (prompt
untrained, completion trained) with one advantage each. Also the held-out reward of a model.

Sampling is batched over every prompt and group member of a micro-batch at once, with the KV cache
(`evaluation.generate.sample_ids`); `bench/RESULTS.md` has the measurements behind that choice.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.render import IGNORE_INDEX, Encoded, end_of_turn_ids, prompt_ids_for_generation
from tuneforge.evaluation.generate import generate_all, sample_ids
from tuneforge.evaluation.rewards import RewardFn, score
from tuneforge.objectives import Objective
from tuneforge.objectives.params import OnlineParams

Rewards = list[tuple[str, RewardFn, float]]


@dataclass
class Rollouts:
    """Called by the loop with a window's micro-batches of prompt examples; returns the sampled sequences
    per micro-batch, each micro-batch's per-sequence tensors (`rewards`, and `advantages` when the objective
    derives them from the group's rewards) and the window's rollout figures."""

    model: torch.nn.Module
    tokenizer: object
    chat: bool
    objective: Objective
    params: OnlineParams
    rewards: Rewards
    autocast: object = nullcontext
    _prompts: dict[int, tuple[list[int], str]] = field(default_factory=dict)

    def __call__(self, window: list[list[TrainExample]]) -> tuple[list[list[TrainExample]],
                                                                    list[dict[str, torch.Tensor]], dict[str, float]]:
        sequences, extras = [], []
        totals: list[float] = []
        parts: dict[str, list[float]] = {}
        lengths: list[int] = []
        unfinished = 0
        for examples in window:
            rolled, rewards, by_fn, finished = self._rollout(examples)
            sequences.append(rolled)
            flat = torch.tensor(rewards, dtype=torch.float32)
            extra = {"rewards": flat}
            if self.objective.advantages is not None:
                grouped = flat.view(len(examples), self.params.group_size)
                extra["advantages"] = self.objective.advantages(grouped, self.params).flatten()
            extras.append(extra)
            totals += rewards
            for name, values in by_fn.items():
                parts.setdefault(name, []).extend(values)
            lengths += [sum(1 for label in s.encoded.labels if label != IGNORE_INDEX) for s in rolled]
            unfinished += finished.count(False)
        metrics = {"reward_mean": statistics.fmean(totals), "reward_std": statistics.pstdev(totals),
                   "completion_length": statistics.fmean(lengths), "unfinished_fraction": unfinished / len(totals)}
        if len(parts) > 1:
            metrics |= {f"reward_{metric_name(name)}": statistics.fmean(v) for name, v in parts.items()}
        return sequences, extras, metrics

    def _rollout(self, examples: list[TrainExample]):
        group = self.params.group_size
        sampled = [e for e in examples for _ in range(group)]
        rolled, completions, finished = sample_sequences(self.model, self.tokenizer, sampled, self._prompts,
                                                         self.chat, self.params, self.autocast)
        texts = [self.tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
        asked = [prompt_text(e.example) for e in sampled]
        rewards, by_fn = score(self.rewards, texts, [self._prompts[e.sample_id][1] for e in sampled], asked)
        return rolled, rewards, by_fn, finished


def sample_sequences(model, tokenizer, examples: list[TrainExample], prompts: dict[int, tuple[list[int], str]],
                     chat: bool, params, autocast) -> tuple[list[TrainExample], list[list[int]], list[bool]]:
    """One completion sampled by the model for each example's prompt (`params`: max_new_tokens, temperature,
    top_p), as training sequences (prompt untrained, completion trained), with the completions' ids and whether
    each ended its turn. `prompts` keeps each example's prompt ids across calls."""
    for example in examples:
        if example.sample_id not in prompts:
            prompts[example.sample_id] = prompt_ids_for_generation(example.example, tokenizer, chat=chat)
    asked = [prompts[e.sample_id][0] for e in examples]
    stop_ids = end_of_turn_ids(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with autocast():
            completions = sample_ids(model, tokenizer, asked, max_new_tokens=params.max_new_tokens,
                                     stop_ids=stop_ids, temperature=params.temperature, top_p=params.top_p)
    finally:
        model.train(was_training)
    rolled = [TrainExample(source.sample_id, source.example,
                           Encoded(input_ids=prompt + completion, labels=[IGNORE_INDEX] * len(prompt) + completion,
                                   turn_ends=(len(prompt) + len(completion) - 1,)))
              for source, prompt, completion in zip(examples, asked, completions, strict=True)]
    return rolled, completions, [bool(c) and c[-1] in stop_ids for c in completions]


@dataclass
class OnPolicy:
    """On-policy distillation's data (GKD, Agarwal et al., 2024): each micro-batch, with probability `lam`
    (drawn from the seed and the micro-batch's first example, so a resumed run draws the same), the student's own
    sampled answers to its prompts replace the data's; the teacher then scores every sampled token."""

    model: torch.nn.Module
    tokenizer: object
    chat: bool
    params: object  # GkdParams
    seed: int
    autocast: object = nullcontext
    _prompts: dict[int, tuple[list[int], str]] = field(default_factory=dict)

    def __call__(self, window: list[list[TrainExample]]) -> tuple[list[list[TrainExample]],
                                                                    list[dict[str, torch.Tensor]], dict[str, float]]:
        out, extras, lengths = [], [], []
        for examples in window:
            on_policy = random.Random(f"{self.seed}:{examples[0].sample_id}").random() < self.params.lam
            if on_policy:
                rolled, completions, _ = sample_sequences(self.model, self.tokenizer, examples, self._prompts,
                                                          self.chat, self.params, self.autocast)
                lengths += [len(c) for c in completions]
            out.append(rolled if on_policy else examples)
            # the loss's SFT term is for the data's answers, not the student's own samples
            extras.append({"on_policy": torch.tensor(on_policy)})
        metrics = {"on_policy_fraction": sum(bool(e["on_policy"]) for e in extras) / len(window)}
        if lengths:
            metrics["completion_length"] = statistics.fmean(lengths)
        return out, extras, metrics


def metric_name(label: str) -> str:
    """A reward's name in the logs: a function's own name, or `model` for a reward model."""
    return "model" if label.startswith("model:") else label.rsplit(".", 1)[-1]


def prompt_text(example: Example) -> str:
    """What a reward function is told the prompt was: the last user message."""
    return example.prompt_and_reference()[0][-1]["content"]


@torch.no_grad()
def heldout_rewards(model, tokenizer, examples: Sequence[Example], rewards: Rewards, *, chat: bool,
                    batch_size: int, max_new_tokens: int, autocast=nullcontext) -> tuple[dict[str, float], list[dict]]:
    """Mean reward of the model's greedy completion of each held-out prompt (and each reward function's own
    mean when there are several), with the scored samples."""
    pairs = [p for p in (prompt_ids_for_generation(e, tokenizer, chat=chat) for e in examples) if p is not None]
    if not pairs:
        return {}, []
    was_training = model.training
    model.eval()
    try:
        with autocast():
            texts = generate_all(model, tokenizer, [p for p, _ in pairs], batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, stop_ids=end_of_turn_ids(tokenizer))
    finally:
        model.train(was_training)
    references = [r for _, r in pairs]
    asked = [prompt_text(e) for e in examples if e.prompt_and_reference() is not None]
    totals, parts = score(rewards, texts, references, asked)
    scores = {"reward": statistics.fmean(totals)}
    if len(parts) > 1:
        scores |= {f"reward_{metric_name(name)}": statistics.fmean(v) for name, v in parts.items()}
    samples = [{"prediction": text, "reference": reference, "reward": value}
               for text, reference, value in zip(texts, references, totals, strict=True)]
    return scores, samples
