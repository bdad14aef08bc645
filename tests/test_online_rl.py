"""Online RL (grpo, rloo): reward functions, the KL estimate, sampling, rollouts turned into training
sequences, the policy-gradient loss's value and gradient, and runs end to end on the tiny model."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import lora_tiny, tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.config import IGNORE_INDEX
from tuneforge.data.batching import collate, collate_packed
from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.render import Encoded, end_of_turn_ids
from tuneforge.engine.rollout import Rollouts
from tuneforge.errors import ConfigError, DataError, TuneforgeError
from tuneforge.evaluation.generate import sample_ids
from tuneforge.evaluation.rewards import exact_match, length_penalty, number_match, number_only, resolve_reward, score
from tuneforge.models.parts import label_token_logps
from tuneforge.objectives import REGISTRY, LossContext
from tuneforge.objectives.rl import GrpoParams, kl_k3, policy_gradient_loss, prepare_policy_gradient
from tuneforge.runs.evaluate import evaluate_run
from tuneforge.runs.trained import load_trained, resolve_rewards

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

SUMS = [{"prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(16)]


def test_built_in_rewards():
    completions = ["27", " 27. ", "13 + 14 = 27", "The answer is 26", "twenty-seven"]
    refs = ["27"] * 5
    assert exact_match(completions, refs, [""] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert number_match(completions, refs, [""] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert number_only(completions, refs, [""] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert length_penalty(["a b c", ""], [None, None], ["", ""]) == [-0.03, -0.0]
    assert exact_match(["x"], [None], [""]) == [0.0]
    totals, parts = score([("exact_match", exact_match, 1.0), ("number_match", number_match, 0.5)],
                          completions[:3], refs[:3], [""] * 3)
    assert totals == [1.5, 1.5, 0.5] and set(parts) == {"exact_match", "number_match"}


def test_rewards_by_dotted_path_and_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def short(completions, references, prompts):\n"
                                            "    return [1.0 if len(c) < 3 else 0.0 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward("my_rewards.short", "k")(["ab", "abcd"], [None, None], ["", ""]) == [1.0, 0.0]
    assert resolve_reward("my_rewards:short", "k") is resolve_reward("my_rewards.short", "k")
    for name, message in [("exakt_match", "unknown reward"), ("no_such_module.fn", "cannot import"),
                          ("my_rewards.missing", "has no function")]:
        with pytest.raises(ConfigError, match=message) as info:
            resolve_reward(name, "config key 'objective.rewards[0]'")
        assert "objective.rewards[0]" in str(info.value) and "fix:" in str(info.value)


def test_kl_k3_matches_hand_computed_values():
    logps, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.2)])
    # r = log(0.25/0.5) = -ln 2: exp(r) - r - 1 = 0.5 + ln 2 - 1
    torch.testing.assert_close(kl_k3(logps, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0]))


def test_sampling_keeps_the_stop_token_and_cuts_after_it(tokenizer):
    model = lora_tiny(tokenizer, seed=3).eval()
    stop = end_of_turn_ids(tokenizer)
    prompts = [[1, 5, 9], [1, 7]]
    greedy = sample_ids(model, tokenizer, prompts, max_new_tokens=5, stop_ids=stop)
    for row in greedy:
        assert 1 <= len(row) <= 5
        assert all(token not in stop for token in row[:-1])
    # sampling with a fixed seed is reproducible
    torch.manual_seed(0)
    first = sample_ids(model, tokenizer, prompts, max_new_tokens=5, stop_ids=stop, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    assert sample_ids(model, tokenizer, prompts, max_new_tokens=5, stop_ids=stop, temperature=1.0,
                      top_p=0.9) == first


def test_the_head_sees_a_contiguous_input_and_generation_is_unchanged(tokenizer):
    """transformers hands the head a strided view of the prompt's last position; on it torch's matmul copies the
    head's weight per row (seconds a batch), so generation makes it contiguous — same tokens, hook removed."""
    model = lora_tiny(tokenizer, seed=3).eval()
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_hook(lambda _, args, out: seen.append(args[0].is_contiguous()))
    prompts = [[1, 5, 9, 4], [1, 7]]
    with torch.no_grad():
        plain = model.generate(input_ids=torch.tensor([[0, 0, 1, 7], prompts[0]]).flip(0),
                               attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]), max_new_tokens=3,
                               do_sample=False, pad_token_id=0, eos_token_id=[], use_cache=True)
    seen.clear()
    greedy = sample_ids(model, tokenizer, prompts, max_new_tokens=3, stop_ids=set())
    assert seen and all(seen)
    assert greedy == plain[:, 4:].tolist()
    assert not model.get_output_embeddings()._forward_pre_hooks


def _prompt_examples(n: int) -> list[TrainExample]:
    examples = []
    for i, record in enumerate(SUMS[:n]):
        example = Example("sums.jsonl", i + 1, ({"role": "user", "content": record["prompt"]},
                                                 {"role": "assistant", "content": record["completion"]}),
                          prompt_turns=1)
        examples.append(TrainExample(i, example, Encoded([1, 2], [IGNORE_INDEX, 2], (1,))))
    return examples


def test_rollouts_train_only_the_sampled_completion(tokenizer):
    model = lora_tiny(tokenizer, seed=1)
    params = GrpoParams(group_size=3, max_new_tokens=4, rewards=["length_penalty"])
    rollouts = Rollouts(model, tokenizer, True, REGISTRY["grpo"], params, resolve_rewards(params, "objective"))
    torch.manual_seed(0)
    window = [_prompt_examples(2), _prompt_examples(4)[2:]]
    sequences, extras, metrics = rollouts(window)
    advantages = [extra["advantages"] for extra in extras]
    assert [len(s) for s in sequences] == [6, 6] and [a.shape for a in advantages] == [(6,), (6,)]
    assert [extra["rewards"].shape for extra in extras] == [(6,), (6,)]
    for group in sequences:
        for index, item in enumerate(group):
            labels = item.encoded.labels
            prompt_length = labels.index(next(x for x in labels if x != IGNORE_INDEX))
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": item.example.messages[0]["content"]}],
                                                   add_generation_prompt=True, tokenize=False)
            assert tokenizer.decode(item.encoded.input_ids[:prompt_length]) == prompt
            assert labels[prompt_length:] == item.encoded.input_ids[prompt_length:]  # the completion, all trained
            assert 1 <= len(labels) - prompt_length <= 4
            assert item.sample_id == window[sequences.index(group)][index // 3].sample_id
    assert model.training  # sampling happened in eval mode, and training mode is back
    # group advantages: each group of 3 sums to zero
    for advantage in advantages:
        torch.testing.assert_close(advantage.view(-1, 3).sum(dim=1), torch.zeros(2), atol=1e-5, rtol=0)
    assert {"reward_mean", "reward_std", "completion_length", "unfinished_fraction"} <= set(metrics)


def test_policy_gradient_loss_value_and_gradient(tokenizer):
    """Ratio 1 with one step per rollout: the loss is −mean(A) over completion tokens and its gradient is
    that of −Σ A·log π / n; with β the k3 KL to the reference is added (0 at the start)."""
    model = lora_tiny(tokenizer, seed=2)
    examples = _prompt_examples(3)
    ids, labels = [1, 5, 9, 4, 7], [IGNORE_INDEX, 5, 9, 4, 7]
    rolled = [TrainExample(e.sample_id, e.example, Encoded(ids[: 3 + i], labels[: 3 + i], (2 + i,)))
              for i, e in enumerate(examples)]
    advantages = torch.tensor([1.0, -0.5, 0.25])
    for layout in (collate, collate_packed):
        batch = layout(rolled, tokenizer.pad_token_id) | {"advantages": advantages}
        n = sum(sum(1 for label in r.encoded.labels[1:] if label != IGNORE_INDEX) for r in rolled)
        ctx = LossContext(num_label_tokens=n, params=GrpoParams(beta=0.0))
        model.zero_grad()
        out = policy_gradient_loss(model, batch, ctx)
        out.loss.backward()
        ours = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        logps, owner = label_token_logps(model, batch)
        assert math.isclose(float(out.loss), float(-(advantages[owner]).sum() / n), abs_tol=1e-6)
        model.zero_grad()
        (-(advantages[owner] * logps).sum() / n).backward()
        for a, b in zip(ours, [p.grad for p in model.parameters() if p.requires_grad], strict=True):
            torch.testing.assert_close(a, b)
        assert out.metrics["clip_fraction"] == 0.0


def test_several_updates_per_rollout_keep_the_sampling_policy(tokenizer):
    """With updates > 1 the window's sampling-policy and reference log-probs are computed once, before the
    first update, so later updates see a real ratio (and the clip can act)."""
    model = lora_tiny(tokenizer, seed=4)
    ids = ([1, 5, 9, 4], [1, 7, 2, 8])
    rolled = [TrainExample(e.sample_id, e.example, Encoded(list(i), [IGNORE_INDEX, *i[1:]], (3,)))
              for e, i in zip(_prompt_examples(2), ids, strict=True)]
    batch = collate_packed(rolled, tokenizer.pad_token_id) | {"advantages": torch.tensor([1.0, 0.5])}

    @contextlib.contextmanager
    def reference():
        with model.disable_adapter():
            yield model

    for updates, stored in ((1, set()), (2, {"old_logps", "ref_logps"})):
        prepared = dict(batch)
        ctx = LossContext(num_label_tokens=6, params=GrpoParams(updates=updates), reference=reference)
        with torch.no_grad():
            prepare_policy_gradient(model, [prepared], ctx)
        assert set(prepared) - set(batch) == stored
    with torch.no_grad():
        torch.testing.assert_close(prepared["old_logps"], label_token_logps(model, batch)[0])
        with model.disable_adapter():
            torch.testing.assert_close(prepared["ref_logps"], label_token_logps(model, batch)[0])
    with torch.no_grad():  # the policy moves: the ratio to the stored log-probs is no longer 1
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.05 * torch.randn_like(p))
    moved = policy_gradient_loss(model, prepared, ctx).loss
    at_one = policy_gradient_loss(model, {k: v for k, v in prepared.items() if k != "old_logps"}, ctx).loss
    assert abs(float(moved - at_one)) > 1e-4  # only the surrogate differs: its ratio is no longer 1


@pytest.mark.parametrize(("objective", "updates"), [("grpo", 1), ("rloo", 1), ("grpo", 2), ("ppo", 2)])
def test_online_objectives_train_end_to_end(tmp_path, tiny_model_dir, objective, updates):
    config = tiny_config(tmp_path, tiny_model_dir,
                         objective={"name": objective, "group_size": 4, "max_new_tokens": 5, "updates": updates,
                                    "rewards": ["exact_match", {"name": "length_penalty", "weight": 0.5}]},
                         data={"train": str(write_jsonl(tmp_path / "sums.jsonl", SUMS)),
                               "test": str(write_jsonl(tmp_path / "sums-test.jsonl", SUMS[:4]))},
                         train={"max_steps": 3, "batch_size": 2, "packing": True},
                         eval={"metrics": ["exact_match"], "compare_base": True})
    result = train(config, quiet=True)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 3
    for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "completion_length", "reward_length_penalty"):
        assert all(math.isfinite(r[key]) for r in steps), key
    if objective == "ppo":
        assert all(math.isfinite(r["value_loss"]) for r in steps)
        assert (result.run_dir / "value_head.safetensors").exists()
    assert steps[0]["label_tokens"] == sum(1 for _ in range(2 * 4)) * steps[0]["completion_length"]
    for scores in (result.eval_before, result.eval_after):
        assert {"reward", "reward_exact_match", "reward_length_penalty", "exact_match"} <= set(scores)
    saved = json.loads((result.run_dir / "eval.json").read_text())
    assert "reward" in saved["samples"][0]
    scores, samples = evaluate_run(load_trained(result.run_dir), str(tmp_path / "sums-test.jsonl"), ["exact_match"])
    assert scores["reward"] == result.eval_after["reward"] and len(samples) == 4  # `tuneforge eval` agrees


def test_online_objective_config_errors_fail_before_loading(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "grpo"}, data={"train": str(pairs), "test": None})
    with pytest.raises(DataError, match="samples completions of prompts"):
        train(config, quiet=True)
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "grpo", "rewards": ["exakt_match"]})
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "unknown reward 'exakt_match'" in result.output
    assert "objective" in result.output and not (tmp_path / "run").exists()


def test_a_reward_model_run_as_the_reward(tmp_path, tiny_model_dir):
    """{model: RUN} scores completions with a trained reward model, the same scores `reward score` gives;
    a run that is not a reward model is refused when the config is read."""
    from tuneforge.runs.trained import RewardModelScore, score_rewards

    pairs = [{"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
              "rejected": "no" if i % 2 == 0 else "yes"} for i in range(8)]
    (tmp_path / "rm").mkdir()
    (tmp_path / "sft").mkdir()
    rm_config = tiny_config(tmp_path / "rm", tiny_model_dir, objective={"name": "reward"},
                            data={"train": str(write_jsonl(tmp_path / "pairs.jsonl", pairs)), "test": None},
                            train={"max_steps": 3, "lr": 5e-3})
    rm = train(rm_config, quiet=True).run_dir
    singles = [{"prompt": f"Is {i} even?", "completion": c} for i in range(3) for c in ("yes", "no")]
    rows, _ = score_rewards(load_trained(rm), str(write_jsonl(tmp_path / "singles.jsonl", singles)))
    scorer = RewardModelScore(str(rm), "objective.rewards[0]")
    scores = scorer([s["completion"] for s in singles], [None] * 6, [s["prompt"] for s in singles])
    assert scores == pytest.approx([r["reward"] for r in rows], abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) > 1  # the head was trained: not every score the same

    config = tiny_config(tmp_path, tiny_model_dir,
                         objective={"name": "grpo", "group_size": 2, "max_new_tokens": 3,
                                    "rewards": [{"model": str(rm)}, {"name": "length_penalty", "weight": 0.1}]},
                         data={"train": str(write_jsonl(tmp_path / "sums.jsonl", SUMS)), "test": None},
                         train={"max_steps": 1, "batch_size": 2})
    result = train(config, quiet=True)
    row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["reward_mean"]) and math.isfinite(row["reward_model"])

    sft_run = train(tiny_config(tmp_path / "sft", tiny_model_dir), quiet=True).run_dir
    with pytest.raises(TuneforgeError, match="did not train a reward model"):
        RewardModelScore(str(sft_run), "objective.rewards[0]")
    with pytest.raises(ConfigError, match=r"objective.rewards\[0\].model"):
        RewardModelScore(str(tmp_path / "nowhere"), "objective.rewards[0]")
