"""Preference pairs and the DPO family: records, masks, losses against hand-computed values, the one-forward
pair log-probabilities (padded = packed = separate), accumulation, and a run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import lora_tiny, tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.config import DataConfig, DatasetSpec
from tuneforge.data.batching import batch_sequences, collate, collate_packed, collate_pairs_packed
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.engine.loop import window_context
from tuneforge.errors import DataError
from tuneforge.methods import REGISTRY as METHODS
from tuneforge.models.parts import sequence_logps
from tuneforge.models.tiny import build_tiny_llama
from tuneforge.objectives import REGISTRY, LossContext
from tuneforge.objectives.base import Frozen
from tuneforge.objectives.preference import (
    BetaParams,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    orpo_loss,
    simpo_loss,
)
from tuneforge.runs.evaluate import evaluate_run
from tuneforge.runs.trained import load_trained, score_rewards

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------ losses on fixed log-probabilities

def test_dpo_and_cdpo_match_hand_computed_values():
    # policy chosen -10, ref chosen -12 (ratio +2); policy rejected -15, ref rejected -14 (ratio -1); beta 0.5
    chosen, rejected, beta = t(-10 - -12), t(-15 - -14), 0.5
    expected = -math.log(sigmoid(0.5 * 3))
    assert dpo_loss(chosen, rejected, beta).item() == pytest.approx(expected, rel=1e-12)
    smoothed = -0.9 * math.log(sigmoid(1.5)) - 0.1 * math.log(sigmoid(-1.5))
    assert cdpo_loss(chosen, rejected, beta, 0.1).item() == pytest.approx(smoothed, rel=1e-12)
    assert cdpo_loss(chosen, rejected, beta, 0.0).item() == pytest.approx(expected, rel=1e-12)


def test_ipo_simpo_orpo_match_hand_computed_values():
    assert ipo_loss(t(0.3), t(-0.2), 0.1).item() == pytest.approx((0.5 - 5.0) ** 2, rel=1e-12)
    assert simpo_loss(t(-0.5), t(-1.25), 2.0, 1.0).item() == pytest.approx(-math.log(sigmoid(2.0 * 0.75 - 1.0)))
    pc, pr = math.exp(-0.5), math.exp(-1.25)
    log_odds = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
    expected = 0.5 - 0.1 * math.log(sigmoid(log_odds))
    assert orpo_loss(t(-0.5), t(-1.25), 0.1).item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ records and masks

def pair_records(n: int = 8) -> list[dict]:
    return [{"prompt": f"Is {i} even?" + " Think." * (i % 3), "chosen": "yes" if i % 2 == 0 else "no",
             "rejected": ("no" if i % 2 == 0 else "yes") + " really" * (i % 4)} for i in range(n)]


def encode(tmp_path, tokenizer, records, **data):
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    examples = load_examples([DatasetSpec(path=str(path))], seed=0)
    return encode_examples(examples, tokenizer, DataConfig(train=[str(path)], max_seq_len=128, cache=False, **data))


def test_pairs_train_only_the_responses(tmp_path, tokenizer):
    records = [{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                           {"role": "user", "content": "capital of France?"}],
                "chosen": "Paris", "rejected": [{"role": "assistant", "content": "Lyon, I think"}]}]
    (item,), _ = encode(tmp_path, tokenizer, records)
    for sequence, answer in ((item.encoded, "Paris"), (item.rejected, "Lyon, I think")):
        trained = [i for i, label in zip(sequence.input_ids, sequence.labels, strict=True) if label != -100]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"  # not the earlier assistant turn of the prompt
    shared = next(i for i, label in enumerate(item.encoded.labels) if label != -100)
    assert item.encoded.input_ids[:shared] == item.rejected.input_ids[:shared]  # the same prompt tokens


@pytest.mark.parametrize(("record", "field"), [
    ({"prompt": "q", "chosen": "a"}, None),  # no 'rejected': not a pair, and no other format fits
    ({"prompt": "q", "chosen": "a", "rejected": 3}, "rejected"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "chosen"),
])
def test_bad_pair_records_name_file_line_and_field(tmp_path, record, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair_records(1)[0], record])
    with pytest.raises(DataError) as err:
        load_examples([DatasetSpec(path=str(path))], seed=0)
    assert f"{path}:2" in str(err.value)
    if field:
        assert field in str(err.value)


def test_objective_and_data_kind_must_agree(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "dpo"})
    with pytest.raises(DataError, match="trains on preference pairs"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()  # nothing written


# ------------------------------------------------------------------ log-probabilities of pairs

@pytest.fixture
def lora_model(tokenizer):
    return lora_tiny(tokenizer, seed=5)


def test_pair_logps_equal_padded_packed_and_one_at_a_time(tmp_path, tokenizer, lora_model):
    items, _ = encode(tmp_path, tokenizer, pair_records(6))
    padded, _ = sequence_logps(lora_model, collate(items, tokenizer.pad_token_id))
    packed, _ = sequence_logps(lora_model, collate_packed(items, tokenizer.pad_token_id))
    shared, counts = sequence_logps(lora_model, collate_pairs_packed(items, tokenizer.pad_token_id))
    alone = [sequence_logps(lora_model, collate([item], tokenizer.pad_token_id))[0] for item in items]
    separate = torch.cat([torch.stack([a[0] for a in alone]), torch.stack([a[1] for a in alone])])
    torch.testing.assert_close(padded, separate, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(shared, separate, atol=1e-4, rtol=1e-5)
    assert counts.tolist() == [float(sum(1 for x in s.labels[1:] if x != -100)) for s in batch_sequences(items)]


def test_shared_prompt_layout_computes_each_prompt_once(tmp_path, tokenizer):
    items, _ = encode(tmp_path, tokenizer, pair_records(6))
    batch = collate_pairs_packed(items, tokenizer.pad_token_id)
    separate = sum(len(s) for s in batch_sequences(items))
    prompts = sum(next(i for i, x in enumerate(e.encoded.labels) if x != -100) for e in items)
    assert int(batch["num_tokens"]) == separate - prompts
    mask = batch["attention_mask"][:, 0]
    assert not mask.any(dim=-1).logical_not().any()  # every position (padding too) attends to something


def run_dpo_window(model, items, micro: int, pad_id: int, reference, collate_fn=collate):
    batches = [collate_fn(items[i:i + micro], pad_id) for i in range(0, len(items), micro)]
    ctx = window_context(batches, BetaParams(beta=0.5), Frozen(reference))
    total = 0.0
    for batch in batches:
        out = REGISTRY["dpo"].loss(model, batch, ctx)
        out.loss.backward()
        total += float(out.loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return total, grads


def test_dpo_accumulation_and_packing_keep_loss_and_gradients(tmp_path, tokenizer, lora_model):
    items, _ = encode(tmp_path, tokenizer, pair_records(4))
    reference = METHODS["lora"].reference(lora_model)
    whole, whole_grads = run_dpo_window(lora_model, items, 4, tokenizer.pad_token_id, reference)
    for micro, collate_fn in ((1, collate), (2, collate), (4, collate_packed), (2, collate_pairs_packed),
                              (4, collate_pairs_packed)):
        loss, grads = run_dpo_window(lora_model, items, micro, tokenizer.pad_token_id, reference, collate_fn)
        assert loss == pytest.approx(whole, rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_dpo_starts_at_log2_with_the_adapter_as_the_only_difference(tmp_path, tokenizer):
    model = METHODS["lora"].apply(build_tiny_llama(tokenizer, seed=5), METHODS["lora"].params(dropout=0.0))
    items, _ = encode(tmp_path, tokenizer, pair_records(4))
    batch = collate(items, tokenizer.pad_token_id)
    ctx = LossContext(num_label_tokens=0, num_examples=4, params=BetaParams(),
                      reference=METHODS["lora"].reference(model))
    out = REGISTRY["dpo"].loss(model, batch, ctx)  # LoRA B starts at zero: policy == reference
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)


def test_full_method_reference_is_a_frozen_copy(tokenizer):
    model = build_tiny_llama(tokenizer, seed=5)
    reference = METHODS["full"].reference(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with reference() as frozen:
        assert not any(p.requires_grad for p in frozen.parameters())
        assert not torch.equal(next(frozen.parameters()), next(model.parameters()))


# ------------------------------------------------------------------ end to end

@pytest.mark.parametrize(("objective", "method"), [("dpo", "lora"), ("ipo", "lora"), ("cdpo", "lora"),
                                                  ("simpo", "lora"), ("orpo", "lora"), ("dpo", "full"),
                                                  ("reward", "lora"), ("reward", "full")])
def test_preference_objectives_train_end_to_end(tmp_path, tiny_model_dir, objective, method):
    train_path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(16))
    test_path = write_jsonl(tmp_path / "pairs-test.jsonl", pair_records(8))
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": objective},
                         data={"train": str(train_path), "test": str(test_path)},
                         train={"max_steps": 12, "lr": 5e-3, "packing": True},
                         eval={"metrics": ["loss"]})
    config["method"] = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0} if method == "lora" else {"name": "full"}
    result = train(config, quiet=True)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert {"reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    assert 0.0 <= result.eval_after["reward_accuracy"] <= 1.0 and "loss" in result.eval_after
    # `tuneforge eval` on the finished run gives the same held-out scores (the reference is found again)
    scores, _ = evaluate_run(load_trained(result.run_dir), str(test_path), ["loss"])
    for key in ("loss", "reward_accuracy", "reward_margin"):
        assert scores[key] == pytest.approx(result.eval_after[key], abs=1e-5), key
    if objective == "reward":
        rows, summary = score_rewards(load_trained(result.run_dir), str(test_path))
        assert summary["pair_accuracy"] == pytest.approx(result.eval_after["reward_accuracy"])
        singles = write_jsonl(tmp_path / "singles.jsonl", [{"prompt": "Is 2 even?", "completion": "yes"},
                                                            {"prompt": "Is 2 even?", "completion": "no"}])
        out = CliRunner().invoke(app, ["reward", "score", str(result.run_dir), "--data", str(singles)])
        assert out.exit_code == 0 and out.output.count("reward ") == 2, out.output


def test_reward_scores_equal_padded_packed_and_shared_prompt(tmp_path, tokenizer, lora_model):
    from tuneforge.objectives.reward import attach_head, sequence_rewards

    items, _ = encode(tmp_path, tokenizer, pair_records(6))
    attach_head(lora_model)
    torch.nn.init.normal_(lora_model.reward_head.weight, std=0.1)
    with torch.no_grad():
        padded = sequence_rewards(lora_model, collate(items, tokenizer.pad_token_id))
        packed = sequence_rewards(lora_model, collate_packed(items, tokenizer.pad_token_id))
        shared = sequence_rewards(lora_model, collate_pairs_packed(items, tokenizer.pad_token_id))
        alone = torch.stack([sequence_rewards(lora_model, collate([i], tokenizer.pad_token_id)) for i in items])
    separate = torch.cat([alone[:, 0], alone[:, 1]])
    for got in (padded, packed, shared):
        torch.testing.assert_close(got, separate, atol=1e-4, rtol=1e-4)
    assert separate.std() > 0  # the rewards differ, so the comparison means something
