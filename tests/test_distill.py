"""Distillation's divergences against values computed by hand: forward and reverse KL, the generalised JSD,
temperature, the top-k support with the rest pooled, and priority-sampled tokens' unbiased estimate."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tuneforge.objectives.distill import (
    full_support,
    generalized_jsd,
    priority_sample,
    sampled_support,
    top_k_support,
)

TEACHER = [0.5, 0.5]
STUDENT = [0.25, 0.75]


def _logs(*rows: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(rows))


def test_forward_reverse_and_jsd_by_hand():
    teacher, student = _logs(TEACHER), _logs(STUDENT)
    forward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(teacher ‖ student)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(student ‖ teacher)
    assert float(generalized_jsd(student, teacher, 0.0)) == pytest.approx(forward, rel=1e-6)
    assert float(generalized_jsd(student, teacher, 1.0)) == pytest.approx(reverse, rel=1e-6)
    # β = 0.9: m = 0.9 teacher + 0.1 student = (0.475, 0.525)
    to_m = 0.5 * math.log(0.5 / 0.475) + 0.5 * math.log(0.5 / 0.525)
    from_student = 0.25 * math.log(0.25 / 0.475) + 0.75 * math.log(0.75 / 0.525)
    assert float(generalized_jsd(student, teacher, 0.9)) == pytest.approx(0.9 * to_m + 0.1 * from_student, rel=1e-5)
    # the symmetric JSD at β = 0.5 is the same either way round and zero between equal distributions
    assert float(generalized_jsd(student, teacher, 0.5)) == pytest.approx(float(generalized_jsd(teacher, student, 0.5)))
    assert float(generalized_jsd(teacher, teacher, 0.5)) == pytest.approx(0.0, abs=1e-7)


def test_positions_are_kept_apart_and_zero_probabilities_count_zero():
    teacher = _logs(TEACHER, [1.0, 0.0])  # a one-hot teacher row: its zero term contributes nothing
    student = _logs(STUDENT, [0.5, 0.5])
    values = generalized_jsd(student, teacher, 0.0)
    assert values.shape == (2,)
    assert values.tolist() == pytest.approx([0.5 * math.log(2) + 0.5 * math.log(2 / 3), math.log(2)], rel=1e-6)
    logits = torch.zeros(2, 2, requires_grad=True)  # and the student's gradient stays finite there
    generalized_jsd(torch.log_softmax(logits, dim=-1), teacher, 0.5).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_temperature_softens_both_distributions():
    student_logits = torch.tensor([[0.0, math.log(3.0)]])  # (0.25, 0.75) at T = 1
    teacher_logits = torch.tensor([[0.0, 0.0]])
    student, teacher = full_support(student_logits, teacher_logits, 2.0)
    # at T = 2 the student is softmax(0, ln 3 / 2) = (1, √3) / (1 + √3)
    low, high = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    assert student.exp().tolist()[0] == pytest.approx([low, high], rel=1e-6)
    forward = 0.5 * math.log(0.5 / low) + 0.5 * math.log(0.5 / high)
    assert float(generalized_jsd(student, teacher, 0.0)) == pytest.approx(forward, rel=1e-5)


def test_top_k_support_is_the_teachers_k_tokens_and_the_rest_of_the_vocabulary():
    teacher_logprobs = _logs([0.4, 0.3])  # the top 2 of (0.4, 0.3, 0.2, 0.1), at T = 1: the rest holds 0.3
    ids = torch.tensor([[0, 1]])
    student_logits = torch.tensor([[0.0, 0.0, 5.0, 5.0]])  # most of its mass outside the teacher's k
    student, teacher = top_k_support(student_logits, teacher_logprobs, ids, 1.0)
    assert teacher.exp().tolist()[0] == pytest.approx([0.4, 0.3, 0.3], rel=1e-5)
    a = 1 / (2 + 2 * math.exp(5))
    assert student.exp().tolist()[0] == pytest.approx([a, a, 1 - 2 * a], rel=1e-5)
    forward = 0.4 * math.log(0.4 / a) + 0.3 * math.log(0.3 / a) + 0.3 * math.log(0.3 / (1 - 2 * a))
    assert float(generalized_jsd(student, teacher, 0.0)) == pytest.approx(forward, rel=1e-5)
    # the teacher's ratios inside the k are not enough: its mass outside them counts (renormalising over the k
    # alone would score both of these students 0)
    matching = top_k_support(_logs([0.4, 0.3, 0.15, 0.15]), teacher_logprobs, ids, 1.0)
    assert float(generalized_jsd(*matching, 0.0)) == pytest.approx(0.0, abs=1e-6)
    outside = top_k_support(_logs([0.04, 0.03, 0.465, 0.465]), teacher_logprobs, ids, 1.0)
    expected = 0.4 * math.log(10) + 0.3 * math.log(10) + 0.3 * math.log(0.3 / 0.93)
    assert float(generalized_jsd(*outside, 0.0)) == pytest.approx(expected, rel=1e-5)
    # at T = 2 the teacher's rest is tempered as if its 0.3 were spread evenly over the 2 other tokens (0.15 each):
    # √0.4 : √0.3 : 2·√0.15
    _, tempered = top_k_support(student_logits, teacher_logprobs, ids, 2.0)
    roots = [math.sqrt(0.4), math.sqrt(0.3), 2 * math.sqrt(0.15)]
    assert tempered.exp().tolist()[0] == pytest.approx([r / sum(roots) for r in roots], rel=1e-5)


def test_with_the_teachers_rest_at_t_the_k_and_the_rest_are_the_tempered_distribution_pooled():
    generator = torch.Generator().manual_seed(1)
    student_logits, teacher_logits = torch.randn(3, 10, generator=generator), torch.randn(3, 10, generator=generator)
    top = torch.log_softmax(teacher_logits, dim=-1).topk(4, dim=-1)
    tempered = torch.log_softmax(teacher_logits / 2.0, dim=-1)
    rest = torch.log1p(-tempered.gather(-1, top.indices).exp().sum(-1))
    student, teacher = top_k_support(student_logits, top.values, top.indices, 2.0, rest)
    for logs, got in ((tempered, teacher), (torch.log_softmax(student_logits / 2.0, dim=-1), student)):
        kept = logs.gather(-1, top.indices).exp()
        torch.testing.assert_close(got.exp(), torch.cat([kept, 1 - kept.sum(-1, keepdim=True)], dim=-1))


def test_the_top_k_of_the_whole_vocabulary_is_the_full_support():
    generator = torch.Generator().manual_seed(0)
    student_logits, teacher_logits = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)
    full = generalized_jsd(*full_support(student_logits, teacher_logits, 1.0), 0.5)
    top = torch.log_softmax(teacher_logits, dim=-1).topk(8, dim=-1)
    assert torch.allclose(generalized_jsd(*top_k_support(student_logits, top.values, top.indices, 1.0), 0.5), full,
                          atol=1e-5)


def test_priority_sampling_by_hand():
    """p = (0.5, 0.3, 0.15, 0.05), u = (0.9, 0.5, 0.6, 0.1): priorities p / u = (0.556, 0.6, 0.25, 0.5); the two
    highest are tokens 1 and 0, τ is the third, 0.5, and each kept token is estimated at max(p, τ)."""
    tempered = _logs([0.5, 0.3, 0.15, 0.05])
    ids, estimate = priority_sample(tempered, 2, uniform=torch.tensor([[0.9, 0.5, 0.6, 0.1]]))
    assert ids.tolist() == [[1, 0]]
    assert estimate.exp().tolist()[0] == pytest.approx([0.5, 0.5], rel=1e-6)
    # a token far above τ is kept exactly, whatever its u; priorities (0.909, 0.3, 0.24, 0.02): τ = 0.24, and
    # token 1 (0.06) is kept at 0.24, standing for the tokens like it that were not
    ids, estimate = priority_sample(_logs([0.9, 0.06, 0.03, 0.01]), 2,
                                    uniform=torch.tensor([[0.99, 0.2, 0.125, 0.5]]))
    assert ids.tolist() == [[0, 1]]
    assert estimate.exp().tolist()[0] == pytest.approx([0.9, 0.24], rel=1e-5)


def test_priority_samples_are_distinct_and_estimate_the_distribution_without_bias():
    generator = torch.Generator().manual_seed(3)
    tempered = torch.log_softmax(torch.randn(1, 6, generator=generator) / 2.0, dim=-1).expand(40_000, 6)
    torch.manual_seed(0)
    ids, estimate = priority_sample(tempered.contiguous(), 3)
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()  # three distinct tokens at every position
    dense = torch.zeros(40_000, 6).scatter_add(-1, ids, estimate.exp())
    # the mean of 40,000 estimates of each probability (measured standard error under 0.002)
    torch.testing.assert_close(dense.mean(0), tempered[0].exp(), atol=0.01, rtol=0)


def test_the_sampled_support_is_the_cross_entropy_with_the_estimate_and_its_gradient_is_unbiased():
    """Against an estimate of 0.25 at token 1 and 0.75 at token 3 the forward KL is Σ p̂ (log p̂ − log q) with q the
    student's whole-vocabulary softmax at T, not renormalised over the tokens kept; its gradient in the logits is
    (q − p̂) / T, and averaged over many priority samples it is the full forward KL's, (q − p) / T."""
    student_logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    student, teacher = sampled_support(student_logits, _logs([0.25, 0.75]), torch.tensor([[1, 3]]), 2.0)
    q = torch.softmax(student_logits.detach() / 2.0, dim=-1)[0]
    by_hand = 0.25 * math.log(0.25 / float(q[1])) + 0.75 * math.log(0.75 / float(q[3]))
    loss = generalized_jsd(student, teacher, 0.0).sum()
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(student_logits.grad[0], (q - torch.tensor([0.0, 0.25, 0.0, 0.75])) / 2.0)

    generator = torch.Generator().manual_seed(0)  # one distribution, 40,000 positions of 3 samples each
    teacher_logits, student_logits = torch.randn(1, 6, generator=generator), torch.randn(1, 6, generator=generator)
    torch.manual_seed(0)
    ids, estimate = priority_sample(torch.log_softmax(teacher_logits / 2.0, dim=-1).expand(40_000, 6).contiguous(), 3)
    logits = student_logits.expand(40_000, 6).clone().requires_grad_(True)
    generalized_jsd(*sampled_support(logits, estimate, ids, 2.0), 0.0).sum().backward()
    full = student_logits.clone().requires_grad_(True)
    generalized_jsd(*full_support(full, teacher_logits, 2.0), 0.0).sum().backward()
    torch.testing.assert_close(logits.grad.mean(0), full.grad[0], atol=0.005, rtol=0)


def test_priority_sampling_is_refused_for_the_reverse_kl_and_the_jsd():
    from pydantic import ValidationError

    from tuneforge.objectives.params import KdParams

    with pytest.raises(ValidationError, match="forward KL"):
        KdParams(teacher="x", top_k=32, top_k_by="priority", beta=0.5)
    with pytest.raises(ValidationError, match="set top_k too"):
        KdParams(teacher="x", top_k_by="priority")
    assert KdParams(teacher="x", top_k=32, top_k_by="priority").beta == 0


def test_a_check_across_objective_keys_is_located_and_says_its_fix(tmp_path):
    from tuneforge.config import load_config
    from tuneforge.errors import ConfigError
    from tuneforge.objectives import validate_objective_params

    path = tmp_path / "bad.yaml"
    path.write_text("model: default\nobjective: {name: kd, teacher: default, top_k: 32, top_k_by: priority, "
                    "beta: 0.5}\ndata: {train: 'quickstart:train'}\n")
    loaded = load_config(path)
    with pytest.raises(ConfigError) as caught:
        validate_objective_params(loaded.run.objective, loaded.where("objective"))
    assert str(caught.value).startswith(f"{path}:2 ('objective'): objective 'kd': priority-sampled tokens")
    assert "set beta: 0, or top_k_by: top" in str(caught.value) and "'objective.'" not in str(caught.value)


# ------------------------------------------------------------------------------------- the kd objective


def _batch(tmp_path, tokenizer):
    from tests.conftest import qa_records, write_jsonl
    from tuneforge.config import DataConfig, DatasetSpec
    from tuneforge.data.batching import collate
    from tuneforge.data.dataset import encode_examples, load_examples

    path = write_jsonl(tmp_path / "train.jsonl", qa_records(4))
    examples = load_examples([DatasetSpec(path=str(path))], seed=0)
    items, _ = encode_examples(examples, tokenizer, DataConfig(train=[str(path)], max_seq_len=64, cache=False))
    return collate(items, tokenizer.pad_token_id), sum(i.num_label_tokens for i in items)


@pytest.mark.parametrize("top_k", [None, 8])
def test_kd_mixes_the_divergence_at_the_trained_positions_with_sft(tmp_path, tokenizer, top_k):
    """alpha · T² · forward KL + (1 − alpha) · NLL over the trained tokens, from the two models' own logits;
    top-k compares over the teacher's k best tokens and the rest of the vocabulary."""
    from tuneforge.engine.teacher import LiveTeacher
    from tuneforge.models.tiny import build_tiny_llama
    from tuneforge.objectives import REGISTRY, LossContext
    from tuneforge.objectives.params import KdParams

    student, teacher = build_tiny_llama(tokenizer, seed=1), build_tiny_llama(tokenizer, seed=2)
    batch, labels = _batch(tmp_path, tokenizer)
    params = KdParams(teacher="unused", alpha=0.3, temperature=2.0, top_k=top_k)
    live = LiveTeacher(teacher, torch.no_grad, len(tokenizer), top_k, temperature=2.0)
    out = REGISTRY["kd"].loss(student, batch, LossContext(num_label_tokens=labels, params=params, teacher=live))

    trained = batch["labels"][:, 1:] != -100  # by hand, from the full logits of both models
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][trained]
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][trained]
    p_t, log_s = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    if top_k:  # the teacher's k best, and the rest of the vocabulary pooled into one entry, both at T = 2
        ids = t.topk(top_k, dim=-1).indices

        def pooled(logs):
            kept = logs.gather(-1, ids)
            return torch.cat([kept, torch.log1p(-kept.exp().sum(-1, keepdim=True))], dim=-1)

        p_t, log_s = pooled(torch.log_softmax(t / 2, -1)).exp(), pooled(log_s)
    kl = (p_t * (torch.log(p_t) - log_s)).sum()
    nll = torch.nn.functional.cross_entropy(student(input_ids=batch["input_ids"]).logits[:, :-1][trained],
                                            batch["labels"][:, 1:][trained], reduction="sum")
    expected = (0.3 * 4 * kl + 0.7 * nll) / labels
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-4)
    # the tiny random models are nearly uniform (KL ~1e-5 a token): over the k + 1 entries fp32 cancels to ~4e-4
    close = 1e-3 if top_k else 1e-4
    assert out.metrics["distill"] == pytest.approx(float(4 * kl / labels), rel=close)
    out.loss.backward()  # the student learns; the teacher is untouched
    assert all(p.grad is None for p in teacher.parameters())
    sampled = REGISTRY["kd"].loss(student, {**batch, "on_policy": torch.tensor(True)},
                                  LossContext(num_label_tokens=labels, params=params, teacher=live))
    # on the student's own samples (gkd) only the teacher's term counts: its tokens are not answers to learn
    assert float(sampled.loss) == pytest.approx(float(4 * kl / labels), rel=close)


def test_a_teacher_that_is_the_student_gives_no_divergence(tmp_path, tokenizer):
    from tuneforge.engine.teacher import LiveTeacher
    from tuneforge.models.tiny import build_tiny_llama
    from tuneforge.objectives import REGISTRY, LossContext
    from tuneforge.objectives.params import KdParams

    model = build_tiny_llama(tokenizer, seed=1)
    batch, labels = _batch(tmp_path, tokenizer)
    for beta in (0.0, 0.5, 1.0):
        out = REGISTRY["kd"].loss(model, batch, LossContext(num_label_tokens=labels, params=KdParams(
            teacher="x", alpha=1.0, beta=beta), teacher=LiveTeacher(model, torch.no_grad, len(tokenizer), None)))
        assert float(out.loss) == pytest.approx(0.0, abs=1e-5)


def test_the_cached_top_k_gives_the_live_teachers_loss_on_padded_and_packed_batches(tmp_path, tokenizer):
    """The cache is written once over the data in one order and read back per sequence for batches in another
    order, padded or packed: the same log-probs and ids as the live teacher, so the same kd loss."""
    from tests.conftest import qa_records, write_jsonl
    from tuneforge.config import DataConfig, DatasetSpec
    from tuneforge.data.batching import collate, collate_packed
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.engine.teacher import CachedTeacher, LiveTeacher, write_cache
    from tuneforge.errors import TrainingError
    from tuneforge.models.tiny import build_tiny_llama
    from tuneforge.objectives import REGISTRY, LossContext
    from tuneforge.objectives.params import KdParams

    path = write_jsonl(tmp_path / "train.jsonl", qa_records(12))
    items, _ = encode_examples(load_examples([DatasetSpec(path=str(path))], seed=0), tokenizer,
                               DataConfig(train=[str(path)], max_seq_len=64, cache=False))
    live = LiveTeacher(build_tiny_llama(tokenizer, seed=2), torch.no_grad, len(tokenizer), 8, temperature=2.0)
    write_cache(live, items, tokenizer.pad_token_id, 5, tmp_path / "teacher.safetensors")
    cached = CachedTeacher(tmp_path / "teacher.safetensors")
    student = build_tiny_llama(tokenizer, seed=1)
    params = KdParams(teacher="x", top_k=8, alpha=0.5, temperature=2.0)
    for make in (collate, collate_packed):
        batch = make([items[i] for i in (7, 2, 11, 0, 5)], tokenizer.pad_token_id)
        want, got = live(batch), cached(batch)
        assert torch.equal(want.ids, got.ids) and torch.allclose(want.logprobs, got.logprobs, atol=1e-6)
        assert torch.allclose(want.rest, got.rest, atol=1e-6)
        labels = int((batch["labels"][:, 1:] != -100).sum())
        losses = [float(REGISTRY["kd"].loss(student, batch, LossContext(num_label_tokens=labels, params=params,
                                                                          teacher=t)).loss) for t in (live, cached)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "never cached", "completion": "no"}])
    stranger, _ = encode_examples(load_examples([DatasetSpec(path=str(other))], seed=0), tokenizer,
                                  DataConfig(train=[str(other)], max_seq_len=64, cache=False))
    with pytest.raises(TrainingError, match="no entry for a sequence"):
        cached(collate(stranger, tokenizer.pad_token_id))


def test_a_priority_sampling_teacher_and_its_cache_give_the_same_tokens_per_sequence(tmp_path, tokenizer):
    """The live teacher priority-samples k tokens at T; a cache of them is the same file every time it is written
    (its own seeded generator), holds what the live teacher samples from that seed, and gives a padded and a
    packed batch of the same sequences the same tokens and the same kd loss."""
    from tests.conftest import qa_records, write_jsonl
    from tuneforge.config import DataConfig, DatasetSpec
    from tuneforge.data.batching import collate, collate_packed
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.engine.teacher import CachedTeacher, LiveTeacher, write_cache
    from tuneforge.models.parts import label_logits
    from tuneforge.models.tiny import build_tiny_llama
    from tuneforge.objectives import REGISTRY, LossContext
    from tuneforge.objectives.params import KdParams

    path = write_jsonl(tmp_path / "train.jsonl", qa_records(12))
    items, _ = encode_examples(load_examples([DatasetSpec(path=str(path))], seed=0), tokenizer,
                               DataConfig(train=[str(path)], max_seq_len=64, cache=False))
    model = build_tiny_llama(tokenizer, seed=2)
    live = LiveTeacher(model, torch.no_grad, len(tokenizer), 8, temperature=2.0, top_k_by="priority")
    first = collate(items[:5], tokenizer.pad_token_id)
    torch.manual_seed(0)
    sampled = live(first)
    torch.manual_seed(0)
    with torch.no_grad():
        ids, estimate = priority_sample(torch.log_softmax(label_logits(model, first)[0] / 2.0, dim=-1), 8)
    assert sampled.sampled and torch.equal(sampled.ids, ids) and torch.equal(sampled.logprobs, estimate)

    for name in ("a", "b"):
        write_cache(live, items, tokenizer.pad_token_id, 5, tmp_path / f"{name}.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    cached = CachedTeacher(tmp_path / "a.safetensors")
    assert "8 tokens priority-sampled from it" in cached.describe()
    got = cached(first)
    assert got.sampled and torch.equal(got.ids, sampled.ids) and torch.equal(got.logprobs, sampled.logprobs)

    student = build_tiny_llama(tokenizer, seed=1)
    params = KdParams(teacher="x", top_k=8, top_k_by="priority", alpha=0.5, temperature=2.0)
    order = [items[i] for i in (7, 2, 11, 0, 5)]
    labels = sum(i.num_label_tokens for i in order)
    losses = [float(REGISTRY["kd"].loss(student, make(order, tokenizer.pad_token_id), LossContext(
        num_label_tokens=labels, params=params, teacher=cached)).loss) for make in (collate, collate_packed)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def teacher_and_student(tmp_path_factory, tiny_model_dir):
    """A finished tiny teacher run (LoRA) and a one-layer student made from it by the CLI."""
    from typer.testing import CliRunner

    from tests.conftest import tiny_config
    from tuneforge.api import train
    from tuneforge.cli import app

    root = tmp_path_factory.mktemp("distill")
    teacher = train(tiny_config(root, tiny_model_dir, train={"max_steps": 2}), quiet=True).run_dir
    result = CliRunner().invoke(app, ["student", "make", "--from", str(teacher), "--layers", "1", "--out",
                                      str(root / "student")])
    assert result.exit_code == 0, result.output
    assert "layers [1] of the teacher's 2" in result.output
    return root, teacher, root / "student"


@pytest.mark.parametrize("objective", [
    {"name": "kd", "top_k": 4},  # cached: the second run reads the cache the first wrote
    pytest.param({"name": "seqkd", "max_new_tokens": 4}, marks=pytest.mark.slow),
    pytest.param({"name": "gkd", "lam": 1.0, "max_new_tokens": 4}, marks=pytest.mark.slow),
])
def test_each_distillation_objective_trains_a_student(teacher_and_student, tmp_path, objective):
    from tests.conftest import tiny_config
    from tuneforge.api import train
    from tuneforge.runs.layout import read_metrics

    _, teacher, student = teacher_and_student
    config = tiny_config(tmp_path, student, objective={**objective, "teacher": str(teacher)},
                         train={"max_steps": 2})
    config["method"] = {"name": "full"}
    home = Path(os.environ["TUNEFORGE_HOME"]) / "cache"

    def kept(kind: str) -> set[Path]:
        return set((home / kind).glob("*"))

    before = {kind: kept(kind) for kind in ("teacher", "seqkd")}
    result = train(config, quiet=True)
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    written = {kind: kept(kind) - before[kind] for kind in before}
    if objective["name"] == "kd":  # the teacher's top-k, written once and then reused
        assert len(written["teacher"]) == 1 and not written["seqkd"]
        again = train({**config, "output": {**config["output"], "dir": str(tmp_path / "again")}}, quiet=True)
        assert kept("teacher") == before["teacher"] | written["teacher"]
        assert [r["loss"] for r in read_metrics(again.run_dir) if r["kind"] == "train"] == [r["loss"] for r in rows]
    if objective["name"] == "seqkd":  # the teacher's answers, cached
        assert len(written["seqkd"]) == 1 and not written["teacher"]
        assert len(json.loads(next(iter(written["seqkd"])).read_text())["answers"]) == 24  # with their digest
    if objective["name"] == "gkd":  # every micro-batch on the student's own samples, the teacher live
        assert all(r["on_policy_fraction"] == 1.0 for r in rows) and not written["teacher"]


def test_a_teacher_with_another_vocabulary_is_refused_before_any_weights_load(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tests.conftest import tiny_config
    from tuneforge.api import train
    from tuneforge.errors import ConfigError

    other = tmp_path / "other"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tokenizer.add_tokens(["<an-extra-token>"])
    tokenizer.save_pretrained(other)
    (other / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "kd", "teacher": str(other)})
    with pytest.raises(ConfigError, match=r"(?s)teacher .* different vocabularies .* student make"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()
    assert "model " not in capsys.readouterr().out  # the student's weights did not load either
    config["objective"]["teacher"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"(?s)'objective.teacher'.*nowhere does not exist"):
        train(config, quiet=True)
    config["objective"] = {"name": "kd", "teacher": str(tiny_model_dir), "top_k": 10**6}  # issue 30, finding 10
    with pytest.raises(ConfigError, match=r"(?s)'objective.top_k'.*more than the vocabulary's"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


def test_student_make_refuses_what_it_cannot_do_with_exit_2(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    runner = CliRunner()
    for args, said in ((["--from", str(tiny_model_dir), "--layers", "5"], "--layers 5: the model has 2 decoder layers"),
                       (["--from", str(tmp_path / "nowhere"), "--layers", "1"], "no such model directory or run")):
        result = runner.invoke(app, ["student", "make", *args, "--out", str(tmp_path / "student")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_the_report_puts_the_teacher_and_its_students_side_by_side(teacher_and_student, tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import tiny_config
    from tuneforge.api import train
    from tuneforge.cli import app

    _, teacher, student = teacher_and_student
    config = tiny_config(tmp_path, student, train={"max_steps": 1})
    config["method"] = {"name": "full"}
    run = train(config, quiet=True).run_dir
    result = CliRunner().invoke(app, ["student", "report", str(run), "--teacher", str(teacher), "--out",
                                      str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert [(r["role"], r["layers"]) for r in rows] == [("teacher", 2), ("student", 1)]
    assert rows[1]["parameters_m"] < rows[0]["parameters_m"] and all(r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["exact_match"] is not None and rows[0]["speedup"] == 1.0
    assert (tmp_path / "report" / "speed_quality.png").stat().st_size > 0
    assert "| student |" in (tmp_path / "report" / "report.md").read_text()
    missing = CliRunner().invoke(app, ["student", "report", str(tmp_path / "nowhere"), "--teacher", str(teacher),
                                       "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "not a tuneforge run directory" in missing.output
