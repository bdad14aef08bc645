"""Meta-learning's update rules, as functions of parameter dicts and a loss: an inner loop adapts a copy of the
meta-parameters θ to one task's support set by k steps of SGD, and each algorithm turns that task into an outer
gradient for θ, which an outer optimizer (SGD or Adam) applies like any gradient:

- Reptile (Nichol, Achiam & Schulman 2018, https://arxiv.org/abs/1803.02999): θ − φ_k, the direction from the
  adapted weights back to θ, so a step of the outer SGD with rate ε moves θ by ε(φ_k − θ).
- FOMAML (Finn, Abbeel & Levine 2017, https://arxiv.org/abs/1703.03400, first-order): the query loss's gradient at
  the adapted weights, ∇_φ L_query(φ_k), applied to θ.
- MAML (the same paper): the query loss's gradient with respect to θ through the k inner steps (second order,
  `create_graph`), d L_query(φ_k(θ)) / dθ.

A loss is `loss_of(params, batch)`: the model's loss with `params` in place of its trainable parameters
(`functional_loss`, through `torch.func.functional_call`), so θ itself is never written here: the inner loop works
on new tensors, and the caller's model is unchanged when a task's gradient is returned."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

Params = dict[str, torch.Tensor]
LossOf = Callable[[Params, object], torch.Tensor]  # (parameters, batch) -> the scalar loss
ALGORITHMS = ("reptile", "fomaml", "maml")


def adapt(loss_of: LossOf, theta: Params, support: Sequence, lr: float, *, second_order: bool = False) -> Params:
    """φ_k: k = len(support) steps of SGD with rate `lr` from θ, a step per support batch. With `second_order` the
    steps stay in the autograd graph (MAML differentiates through them); otherwise each φ_i is a fresh leaf."""
    phi = theta if second_order else _leaves(theta)
    for batch in support:
        grads = torch.autograd.grad(loss_of(phi, batch), tuple(phi.values()), create_graph=second_order)
        phi = {name: p - lr * g for (name, p), g in zip(phi.items(), grads, strict=True)}
        if not second_order:
            phi = _leaves(phi)
    return phi


def task_gradient(algorithm: str, loss_of: LossOf, theta: Params, support: Sequence, query: Sequence,
                  inner_lr: float) -> tuple[Params, dict[str, float]]:
    """One task's outer gradient for θ (see the module's docstring), and its losses: the query loss before and
    after adapting (Reptile, which has no query step, reports them too when a query set is given)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown meta-learning algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    before = _mean_loss(loss_of, theta, query)
    if algorithm == "reptile":
        phi = adapt(loss_of, theta, support, inner_lr)
        gradient = {name: p.detach() - phi[name].detach() for name, p in theta.items()}
        return gradient, {"query_loss_before": before, "query_loss_after": _mean_loss(loss_of, phi, query)}
    # second order: attention's fused kernels have no double backward, the math one has
    with sdpa_kernel(SDPBackend.MATH) if algorithm == "maml" else nullcontext():
        phi = adapt(loss_of, theta, support, inner_lr, second_order=algorithm == "maml")
        query_loss = sum(loss_of(phi, batch) for batch in query) / len(query)
        wrt = theta if algorithm == "maml" else phi
        grads = torch.autograd.grad(query_loss, tuple(wrt.values()))
    gradient = {name: g.detach() for name, g in zip(wrt, grads, strict=True)}
    return gradient, {"query_loss_before": before, "query_loss_after": float(query_loss.detach())}


def mean_gradient(gradients: Sequence[Params]) -> Params:
    """The meta-batch's outer gradient: the mean over its tasks."""
    return {name: torch.stack([g[name] for g in gradients]).mean(0) for name in gradients[0]}


def functional_loss(model: torch.nn.Module, loss: Callable[[torch.nn.Module, object], torch.Tensor]) -> LossOf:
    """`loss(model, batch)` evaluated with given parameters in place of the model's own (by name, as
    `named_parameters` spells them; the others stay the model's)."""
    holder = _Holder(model, loss)

    def loss_of(params: Params, batch) -> torch.Tensor:
        return torch.func.functional_call(holder, {f"model.{name}": p for name, p in params.items()}, (batch,),
                                          strict=False)

    return loss_of


def trainable(model: torch.nn.Module) -> Params:
    """θ: the model's trainable parameters by name (the method's: LoRA's A and B, or every weight)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class _Holder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch) -> torch.Tensor:
        return self.loss(self.model, batch)


def _leaves(params: Params) -> Params:
    return {name: p.detach().clone().requires_grad_() for name, p in params.items()}


def _mean_loss(loss_of: LossOf, params: Params, batches: Sequence) -> float | None:
    if not batches:
        return None
    with torch.no_grad():
        return float(sum(loss_of(params, batch) for batch in batches)) / len(batches)
