"""Meta-learning's update rules against updates computed by hand, and on a real (tiny) LoRA model: the inner loop
never writes the meta-parameters."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import lora_tiny
from tuneforge.strategies.metalearning import adapt, functional_loss, mean_gradient, task_gradient, trainable

# A linear model y = w·x with the squared error L(w; x, y) = (w·x − y)², whose gradient is 2(w·x − y)x.
# θ = (0.5, −1), inner rate α = 0.1, support batches (x=(1, 2), y=1) then (x=(0, 1), y=2), query (x=(1, 1), y=0).
THETA = torch.tensor([0.5, -1.0])
SUPPORT = [(torch.tensor([1.0, 2.0]), 1.0), (torch.tensor([0.0, 1.0]), 2.0)]
QUERY = [(torch.tensor([1.0, 1.0]), 0.0)]


def squared_error(params, batch):
    x, y = batch
    return (params["w"] @ x - y) ** 2


def theta():
    return {"w": THETA.clone().requires_grad_()}


def test_inner_loop_by_hand():
    # step 1: w·x = 0.5 − 2 = −1.5, residual −2.5, gradient 2(−2.5)(1, 2) = (−5, −10): φ1 = θ − 0.1·g = (1, 0)
    # step 2: w·x = 0, residual −2, gradient 2(−2)(0, 1) = (0, −4): φ2 = (1, 0.4)
    phi = adapt(squared_error, theta(), SUPPORT, 0.1)
    assert torch.allclose(phi["w"], torch.tensor([1.0, 0.4]))


@pytest.mark.parametrize(("algorithm", "expected"), [
    # Reptile: θ − φ2 = (0.5 − 1, −1 − 0.4)
    ("reptile", [-0.5, -1.4]),
    # FOMAML: the query gradient at φ2: w·x = 1.4, residual 1.4, gradient 2.8·(1, 1)
    ("fomaml", [2.8, 2.8]),
    # MAML: φ_{i} = (I − 2α x_i x_iᵀ) φ_{i−1} + 2α y_i x_i, so dL/dθ = A1 A2 ∇L(φ2) with A_i = I − 2α x_i x_iᵀ:
    # A2 = [[1, 0], [0, 0.8]], A2·(2.8, 2.8) = (2.8, 2.24); A1 = [[0.8, −0.4], [−0.4, 0.2]],
    # A1·(2.8, 2.24) = (2.24 − 0.896, −1.12 + 0.448) = (1.344, −0.672)
    ("maml", [1.344, -0.672]),
])
def test_outer_gradients_by_hand(algorithm, expected):
    params = theta()
    gradient, losses = task_gradient(algorithm, squared_error, params, SUPPORT, QUERY, 0.1)
    assert torch.allclose(gradient["w"], torch.tensor(expected), atol=1e-6)
    # query loss before: (0.5 − 1)² = 0.25; after (at φ2 = (1, 0.4)): 1.4² = 1.96
    assert losses["query_loss_before"] == pytest.approx(0.25)
    assert losses["query_loss_after"] == pytest.approx(1.96)
    assert torch.equal(params["w"].detach(), THETA)  # θ untouched
    # an outer SGD step of rate ε on the mean gradient; Reptile's moves θ toward φ2 by ε
    outer = torch.optim.SGD(params.values(), lr=0.5)
    params["w"].grad = mean_gradient([gradient, gradient])["w"]
    outer.step()
    assert torch.allclose(params["w"].detach(), THETA - 0.5 * torch.tensor(expected))


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_inner_loop_leaves_the_model_untouched(tokenizer, algorithm):
    """On a tiny Llama with LoRA: after a task's gradient, every weight of the model is bitwise what it was, no
    gradient is left on it, and the functional loss at θ is the model's own loss."""
    model = lora_tiny(tokenizer, seed=0)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 200, (2, 12), generator=generator)} for _ in range(3)]

    def loss(m, batch):
        return m(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    loss_of = functional_loss(model, loss)
    theta_params = trainable(model)
    assert theta_params and all("lora_" in name for name in theta_params)
    assert torch.equal(loss_of(theta_params, batches[0]), loss(model, batches[0]))
    gradient, losses = task_gradient(algorithm, loss_of, theta_params, batches[:2], batches[2:], 1e-2)
    assert gradient.keys() == theta_params.keys() and all(torch.isfinite(g).all() for g in gradient.values())
    assert any(g.abs().sum() > 0 for g in gradient.values())
    assert losses["query_loss_after"] != losses["query_loss_before"]
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_second_order_terms_change_the_gradient(tokenizer):
    """MAML's gradient differs from FOMAML's on a real model (the inner steps' curvature), and equals it when
    the inner rate is zero (then φ = θ and both are the query gradient at θ)."""
    model = lora_tiny(tokenizer, seed=1)
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(5, 200, (2, 10), generator=generator)} for _ in range(2)]
    loss_of = functional_loss(model, lambda m, b: m(input_ids=b["input_ids"], labels=b["input_ids"]).loss)
    grads = {(algorithm, lr): task_gradient(algorithm, loss_of, trainable(model), batches[:1], batches[1:], lr)[0]
             for algorithm in ("fomaml", "maml") for lr in (0.0, 0.5)}
    same = [torch.allclose(grads["fomaml", 0.0][n], grads["maml", 0.0][n], atol=1e-6) for n in grads["maml", 0.0]]
    assert all(same)
    differ = [not torch.allclose(grads["fomaml", 0.5][n], grads["maml", 0.5][n], atol=1e-6)
              for n in grads["maml", 0.5]]
    assert any(differ)


def episodes(tokenizer, tasks: int = 3, per_task: int = 12):
    from tuneforge.config import DataConfig
    from tuneforge.data.dataset import encode_examples
    from tuneforge.data.episodes import Episodes
    from tuneforge.data.formats import Example

    def task(name):
        examples = [Example(f"{name}.jsonl", i + 1, task=name,
                            messages=({"role": "user", "content": f"{name} {i}?"},
                                      {"role": "assistant", "content": f"{name[::-1]} {i * 7 % 10}"}))
                    for i in range(per_task)]
        return encode_examples(examples, tokenizer, DataConfig(cache=False))[0]

    return Episodes({f"task{t}": task(f"task{t}") for t in range(tasks)}, meta_batch=2, inner_steps=2, support=2,
                    query=3)


def test_episodes_are_seeded_by_step_and_disjoint(tokenizer):
    from tuneforge.config import TrainConfig

    plan = episodes(tokenizer).plan(TrainConfig(seed=7))
    window = plan.window(5)
    assert window == plan.window(5) and window != plan.window(6)
    assert len(window) == 2 and len({e.task for e in window}) == 2
    for episode in window:
        ids = [e.sample_id for e in episode]
        assert len(ids) == len(set(ids)) == 2 * 2 + 3  # support and query drawn without repeats
        assert {e.example.task for e in episode} == {episode.task}
    assert plan.steps_per_epoch == 3  # 36 examples, 14 drawn a step


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_loop_update_is_the_mean_task_gradient(tokenizer, algorithm):
    """Each episode's loss, as the loop computes and backpropagates it, leaves on the weights the mean of the
    tasks' outer gradients, and its value is the mean query loss after adapting."""
    from tuneforge.config import TrainConfig
    from tuneforge.data.batching import count_label_tokens
    from tuneforge.engine.loop import window_context
    from tuneforge.objectives import get_objective
    from tuneforge.objectives.base import Frozen
    from tuneforge.objectives.params import ObjectiveParams
    from tuneforge.strategies.meta import meta_objective

    model = lora_tiny(tokenizer, seed=2)
    sft = get_objective("sft")
    objective = meta_objective(sft, algorithm, inner_lr=0.05)
    window = episodes(tokenizer).plan(TrainConfig(seed=0)).window(0)
    batches = [objective.kind.collate(episode, tokenizer.pad_token_id) for episode in window]
    ctx = window_context(batches, ObjectiveParams(), Frozen())
    assert ctx.num_examples == 2
    values = []
    for batch in batches:
        out = objective.loss(model, batch, ctx)
        out.loss.backward()
        values.append(float(out.loss))

    def base(m, sub):
        sub_ctx = window_context([sub], ObjectiveParams(), Frozen())
        assert sub_ctx.num_label_tokens == count_label_tokens(sub)
        return sft.loss(m, sub, sub_ctx).loss

    expected, after = [], []
    for batch in batches:
        gradient, losses = task_gradient(algorithm, functional_loss(model, base), trainable(model), batch["support"],
                                         batch["query"], 0.05)
        expected.append(gradient)
        after.append(losses["query_loss_after"])
    mean = mean_gradient(expected)
    for name, param in trainable(model).items():
        assert torch.allclose(param.grad, mean[name], atol=1e-6, rtol=1e-4), name
    assert sum(values) == pytest.approx(sum(after) / 2, rel=1e-5)
