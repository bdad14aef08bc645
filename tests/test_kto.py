"""KTO on rated completions: the record format and its errors, the KL reference side, the loss on a batch
against separately computed log-probabilities, the data-kind guards, and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import lora_tiny, tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.config import DataConfig, DatasetSpec
from tuneforge.data.batching import collate
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.data.formats import with_kl_completions
from tuneforge.data.kinds import KINDS
from tuneforge.engine.loop import window_context
from tuneforge.errors import DataError
from tuneforge.methods import REGISTRY as METHODS
from tuneforge.models.parts import sequence_logps
from tuneforge.objectives import REGISTRY
from tuneforge.objectives.base import Frozen
from tuneforge.objectives.preference import KtoParams, kto_loss
from tuneforge.runs.evaluate import evaluate_run
from tuneforge.runs.trained import load_trained

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def rated_records(n: int = 8) -> list[dict]:
    return [{"prompt": f"Is {i} even?", "completion": ("yes" if i % 2 == 0 else "no") if i % 3 else "maybe so",
             "label": bool(i % 3)} for i in range(n)]


def load(tmp_path, records):
    path = write_jsonl(tmp_path / "rated.jsonl", records)
    return load_examples([DatasetSpec(path=str(path))], seed=0), path


def test_rated_records_and_their_kl_side(tmp_path):
    chat = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}],
            "label": True}
    examples, _ = load(tmp_path, [*rated_records(3), chat])
    assert [e.desirable for e in examples] == [False, True, True, True]
    assert all(e.is_rated and not e.is_pair for e in examples)
    paired = with_kl_completions(examples)
    for index, item in enumerate(paired):
        other = examples[(index + 1) % len(examples)]
        assert item.messages == examples[index].messages and item.desirable == examples[index].desirable
        assert item.rejected[: item.prompt_turns] == examples[index].messages[: item.prompt_turns]
        assert item.rejected[item.prompt_turns:] == other.messages[other.prompt_turns:]


@pytest.mark.parametrize(("record", "field"), [
    ({"prompt": "q", "completion": "a", "label": "yes"}, "label"),
    ({"prompt": "q", "completion": "", "label": True}, "completion"),
    ({"prompt": "q", "completion": [{"role": "user", "content": "a"}], "label": False}, "completion"),
])
def test_bad_rated_records_name_file_line_and_field(tmp_path, record, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a", "label": True}, record])
    with pytest.raises(DataError) as err:
        load_examples([DatasetSpec(path=str(path))], seed=0)
    assert f"{path}:2" in str(err.value) and field in str(err.value)


def test_rated_data_and_objective_must_agree(tmp_path, tiny_model_dir):
    rated = write_jsonl(tmp_path / "rated.jsonl", rated_records(6))
    # an SFT run would train toward the bad completions too: refused, naming the record
    config = tiny_config(tmp_path, tiny_model_dir, data={"train": str(rated), "test": None})
    with pytest.raises(DataError, match="whatever its label") as err:
        train(config, quiet=True)
    assert f"{rated}:1" in str(err.value)
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "kto"})
    with pytest.raises(DataError, match="has no label"):
        train(config, quiet=True)
    all_good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "q", "completion": "a", "label": True}] * 3)
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "kto"}, data={"train": str(all_good),
                                                                                   "test": None})
    with pytest.raises(DataError, match="every label is True"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


def test_kto_loss_on_a_batch_equals_hand_assembly(tmp_path, tokenizer):
    """The objective's loss = kto_loss of (log π − log π_ref) of each completion, with the reference point the
    mean log-ratio of the mismatched completions, whichever layout computes them."""
    examples, path = load(tmp_path, rated_records(6))
    items, _ = encode_examples(with_kl_completions(examples), tokenizer,
                               DataConfig(train=[str(path)], max_seq_len=64, cache=False))
    model = lora_tiny(tokenizer, seed=7)
    with torch.no_grad():  # move the policy away from the reference
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.05 * torch.randn_like(p))
    reference = METHODS["lora"].reference(model)
    params = KtoParams(beta=0.5, desirable_weight=1.5)
    alone = []
    for item in items:
        batch = collate([item], tokenizer.pad_token_id)
        with torch.no_grad():
            policy = sequence_logps(model, batch)[0]
            with reference() as frozen:
                ref = sequence_logps(frozen, batch)[0]
        alone.append(policy - ref)  # [own completion, mismatched completion]
    ratios = torch.stack(alone)
    desirable = torch.tensor([bool(e.example.desirable) for e in items])
    expected = kto_loss(ratios[:, 0], desirable, ratios[:, 1].mean(), 0.5, 1.5, 1.0).mean()
    for packed in (False, True):  # the rated kind's batches: padded, or packed as pairs are (issue 29)
        batch = KINDS["rated"].collate(items, tokenizer.pad_token_id, packed)
        out = REGISTRY["kto"].loss(model, batch, window_context([batch], params, Frozen(reference)))
        assert float(out.loss) == pytest.approx(float(expected), abs=1e-5)
        assert 0 <= out.metrics["reward_accuracy"] <= 1
        assert out.metrics["kl"] == pytest.approx(max(float(ratios[:, 1].mean()), 0.0), abs=1e-5)


def test_kto_trains_end_to_end(tmp_path, tiny_model_dir):
    train_path = write_jsonl(tmp_path / "rated.jsonl", rated_records(24))
    test_path = write_jsonl(tmp_path / "rated-test.jsonl", rated_records(9))
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "kto", "beta": 0.5},
                         data={"train": str(train_path), "test": str(test_path)},
                         train={"max_steps": 12, "lr": 5e-3, "packing": True}, eval={"metrics": ["loss"]})
    result = train(config, quiet=True)
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "train"]
    assert {"reward_accuracy", "reward_margin", "kl"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    scores, _ = evaluate_run(load_trained(result.run_dir), str(test_path), ["loss"])
    for key in ("loss", "reward_accuracy"):
        assert scores[key] == pytest.approx(result.eval_after[key], abs=1e-5), key
