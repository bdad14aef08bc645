"""Rollouts for online objectives (grpo, rloo, ppo): sample a group of completions per prompt with the current
policy, score them with the reward functions, and turn them into ordinary training sequences (prompt
untrained, completion trained) with one advantage each. Also the held-out reward of a model.

Sampling is batched over every prompt and group member of a micro-batch at once, with the KV cache
(`evaluation.generate.sample_ids`); `bench/RESULTS.md` has the measurements behind that choice.
"""

from __future__ import annotations

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

    def _prompt(self, example: TrainExample) -> tuple[list[int], str]:
        if example.sample_id not in self._prompts:
            self._prompts[example.sample_id] = prompt_ids_for_generation(example.example, self.tokenizer,
                                                                         chat=self.chat)
        return self._prompts[example.sample_id]

    def _rollout(self, examples: list[TrainExample]):
        group = self.params.group_size
        prompts = [self._prompt(e) for e in examples for _ in range(group)]
        stop_ids = end_of_turn_ids(self.tokenizer)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                completions = sample_ids(self.model, self.tokenizer, [p for p, _ in prompts],
                                         max_new_tokens=self.params.max_new_tokens, stop_ids=stop_ids,
                                         temperature=self.params.temperature, top_p=self.params.top_p)
        finally:
            self.model.train(was_training)
        texts = [self.tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
        asked = [prompt_text(e.example) for e in examples for _ in range(group)]
        rewards, by_fn = score(self.rewards, texts, [r for _, r in prompts], asked)
        rolled = []
        for index, ((prompt, _), completion) in enumerate(zip(prompts, completions, strict=True)):
            source = examples[index // group]
            encoded = Encoded(input_ids=prompt + completion, labels=[IGNORE_INDEX] * len(prompt) + completion,
                              turn_ends=(len(prompt) + len(completion) - 1,))
            rolled.append(TrainExample(source.sample_id, source.example, encoded))
        finished = [bool(c) and c[-1] in stop_ids for c in completions]
        return rolled, rewards, by_fn, finished


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
