"""Distillation's divergences against values computed by hand: forward and reverse KL, the generalised JSD,
temperature, and the top-k support renormalised over the teacher's k tokens."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.objectives.distill import full_support, generalized_jsd, top_k_support

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


def test_top_k_support_renormalises_over_the_teachers_k_tokens():
    teacher_logprobs = _logs([0.4, 0.3])  # the top 2 of (0.4, 0.3, 0.2, 0.1), at T = 1
    ids = torch.tensor([[0, 1]])
    student_logits = torch.tensor([[0.0, 0.0, 5.0, 5.0]])  # its mass outside the k does not count
    student, teacher = top_k_support(student_logits, teacher_logprobs, ids, 1.0)
    assert teacher.exp().tolist()[0] == pytest.approx([4 / 7, 3 / 7], rel=1e-6)
    assert student.exp().tolist()[0] == pytest.approx([0.5, 0.5], rel=1e-6)
    forward = 4 / 7 * math.log((4 / 7) / 0.5) + 3 / 7 * math.log((3 / 7) / 0.5)
    assert float(generalized_jsd(student, teacher, 0.0)) == pytest.approx(forward, rel=1e-5)
    # at T = 2 the k are renormalised from the tempered teacher: √0.4 : √0.3
    _, tempered = top_k_support(student_logits, teacher_logprobs, ids, 2.0)
    share = math.sqrt(0.4) / (math.sqrt(0.4) + math.sqrt(0.3))
    assert tempered.exp().tolist()[0] == pytest.approx([share, 1 - share], rel=1e-6)


def test_the_top_k_of_the_whole_vocabulary_is_the_full_support():
    generator = torch.Generator().manual_seed(0)
    student_logits, teacher_logits = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)
    full = generalized_jsd(*full_support(student_logits, teacher_logits, 1.5), 0.5)
    top = torch.log_softmax(teacher_logits, dim=-1).topk(8, dim=-1)
    assert torch.allclose(generalized_jsd(*top_k_support(student_logits, top.values, top.indices, 1.5), 0.5), full,
                          atol=1e-6)
