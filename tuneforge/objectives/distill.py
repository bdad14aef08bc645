"""Knowledge distillation's divergences between a teacher's and a student's next-token distributions, as pure
functions of log-probabilities over one support: the whole vocabulary, the teacher's top-k tokens with the rest
of the vocabulary pooled, or k tokens priority-sampled from the teacher (what a cache of teacher log-probs holds)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuneforge.models.parts import label_logits
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.objectives.params import GkdParams, KdParams, SeqkdParams
from tuneforge.objectives.sft import sft_loss


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """The divergence at each position (the last dimension is the support; log-probs in, fp32 advised):
    beta 0 is the forward KL(teacher ‖ student) (classic KD, mode-covering), beta 1 the reverse
    KL(student ‖ teacher) (mode-seeking), and in between the generalised Jensen-Shannon divergence of GKD
    (Agarwal et al., 2024, https://arxiv.org/abs/2306.13649, eq. 1): β·KL(teacher ‖ m) + (1 − β)·KL(student ‖ m)
    with m = β·teacher + (1 − β)·student, as TRL's `generalized_jsd_loss` computes it."""
    if beta == 0:
        return _kl(teacher, student)
    if beta == 1:
        return _kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, from log-probs; a token p gives no probability (log-prob -inf, e.g. a
    masked vocabulary entry) counts zero, with a zero gradient rather than NaN."""
    never = torch.isneginf(p)
    terms = p.exp() * (torch.where(never, torch.zeros_like(p), p) - q)
    return torch.where(never, torch.zeros_like(terms), terms).sum(-1)


def full_support(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probs over the whole vocabulary at temperature T."""
    return (torch.log_softmax(student_logits.float() / temperature, dim=-1),
            torch.log_softmax(teacher_logits.float() / temperature, dim=-1))


def top_k_support(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                  temperature: float, teacher_rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probs at temperature T over the teacher's top-k tokens (`teacher_ids`, with its log-probs
    at T = 1) and one more entry for the rest of the vocabulary. Without that entry a student could put any mass
    outside the teacher's k unpunished (measured: renormalised over the 32 alone, at alpha 0.9 and T 2, the student
    wrote '2028-107-222'). The student's rest is exact (its whole vocabulary at T). The teacher's is
    `teacher_rest`, its log-mass outside the k at T, when given (then the k + 1 are the full tempered
    distribution with the rest's tokens pooled); else what its k leave at T = 1, tempered as if spread evenly over
    the other V − k tokens: (V − k)^(1 − 1/T) · rest^(1/T). At T = 1 the two agree. Shapes: student logits
    (..., vocab), teacher log-probs and ids (..., k), teacher_rest (...)."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_ids)
    if teacher_rest is not None:
        rest = teacher_rest.float().clamp(max=-1e-6).unsqueeze(-1)
        kept = log1mexp(rest)  # the k's mass at T, spread over them as the tempered k are
        teacher = torch.log_softmax(teacher_logprobs.float() / temperature, dim=-1) + kept
        return _with_rest(student), torch.cat([teacher, rest], dim=-1)
    teacher = _with_rest(teacher_logprobs.float()) / temperature
    others = max(student_logits.shape[-1] - teacher_ids.shape[-1], 1)
    spread = torch.zeros_like(teacher)
    spread[..., -1] = (1 - 1 / temperature) * math.log(others)
    return _with_rest(student), torch.log_softmax(teacher + spread, dim=-1)


def sampled_support(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log-probs at T over its whole vocabulary, read at the teacher's sampled tokens, and the
    teacher's unbiased sparse estimate of its distribution at T there (`priority_sample`), as it is. The forward KL
    against these is the cross-entropy with the estimate (less its entropy), whose gradient q − p̂ equals the full
    forward KL's, q − p, in expectation: unbiased where a top-k support is not, since the student is not
    renormalised over the tokens kept (sampled sparse KD: Anshumann et al., 2025, https://arxiv.org/abs/2503.16870)."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_ids)
    return student, teacher_logprobs.float()


def priority_sample(tempered: torch.Tensor, k: int,
                    uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Priority sampling (Duffield, Lund & Thorup, 2007, https://doi.org/10.1145/1314690.1314696) of k distinct
    tokens from the distribution whose log-probs are `tempered` (positions, vocab): token i's priority is p_i / u_i
    with u_i uniform on (0, 1) (`uniform`, drawn when not given), the k of highest priority are kept, each
    estimated at max(p_i, τ) where τ is the (k + 1)-th priority. Each token's estimate is unbiased (its mean is p_i;
    0 when it is not kept), the likely tokens are kept exactly, and no slot is spent on a repeat. Returns the ids
    and the log estimates (positions, k)."""
    u = torch.rand_like(tempered) if uniform is None else uniform
    priority = tempered - torch.log(u)
    top = priority.topk(k + 1, dim=-1)
    ids = top.indices[..., :k]
    return ids, torch.maximum(tempered.gather(-1, ids), top.values[..., k:])


def _with_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """The k log-probs and, last, the log of the mass they leave."""
    return torch.cat([logprobs, log1mexp(torch.logsumexp(logprobs, dim=-1, keepdim=True))], dim=-1)


def log1mexp(logmass: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)): the log of the mass that log-mass x leaves, never quite 0 (x is taken as at most −1e−6),
    so no −inf reaches a KL."""
    return torch.log(-torch.expm1(logmass.clamp(max=-1e-6)))


def kd_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """Token-level distillation on the training data (Hinton et al., 2015, https://arxiv.org/abs/1503.02531):
    at every trained position, alpha · T² · D(teacher, student) + (1 − alpha) · cross-entropy on the data's
    token, summed and divided by the window's trained tokens like SFT. D is `generalized_jsd` at `beta`, over the
    whole vocabulary, the teacher's top-k, or k tokens priority-sampled from it."""
    params: KdParams = ctx.params
    if ctx.teacher is None:
        raise RuntimeError("objective kd needs a teacher in its loss context")  # the session loads one
    logits, targets, _ = label_logits(model, batch)
    teacher = ctx.teacher(batch)
    t = params.temperature
    if teacher.ids is None:
        student, target = full_support(logits[:, : teacher.logprobs.shape[-1]], teacher.logprobs, t)
    elif teacher.sampled:
        student, target = sampled_support(logits, teacher.logprobs, teacher.ids, t)
    else:
        student, target = top_k_support(logits, teacher.logprobs, teacher.ids, t, teacher.rest)
    divergence = t**2 * generalized_jsd(student, target, params.beta).sum()
    nll = F.cross_entropy(logits, targets, reduction="sum")
    scale = max(ctx.num_label_tokens, 1)
    # on the student's own samples (gkd) the tokens are not answers to learn: the teacher's term alone
    alpha = 1.0 if bool(batch.get("on_policy", False)) else params.alpha
    loss = (alpha * divergence + (1 - alpha) * nll) / scale
    return LossOutput(loss, {"distill": divergence.item() / scale, "nll": nll.item() / scale})


OBJECTIVES = (Objective("seqkd", "sequence-level distillation: SFT on the teacher's own answers to the training "
                        "prompts (written once, cached)", sft_loss, SeqkdParams, data="teacher_answers"),
              Objective("kd", "token-level distillation from a teacher's next-token distributions (forward / "
                        "reverse KL, generalised JSD), mixed with SFT by alpha", kd_loss, KdParams),
              Objective("gkd", "on-policy distillation (GKD): the teacher scores the student's own sampled answers "
                        "(a share lam of the steps) and the data's", kd_loss, GkdParams))
