"""What keeps a model from forgetting earlier tasks while it learns the next (`strategy: sequential`,
`mitigation:`). Each is a small class with three moments: `start` (before a task trains: anchors, the earlier
model's outputs, a new adapter), `penalty` (the term the loop adds to the loss) or `examples` (what the task
trains on), and `finish` (after the task: the Fisher information). What must survive a resume at a task
boundary is in `state()`; the rest is recomputed from the data and the seed."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from tuneforge.data.batching import to_device
from tuneforge.data.dataset import TrainExample
from tuneforge.engine.loop import window_context
from tuneforge.errors import ConfigError
from tuneforge.strategies import penalties
from tuneforge.strategies.params import EwcParams, L2spParams, LwfParams, MitigationParams, OloraParams, ReplayParams

if TYPE_CHECKING:
    from tuneforge.engine.session import Session

Penalty = Callable[[torch.nn.Module], torch.Tensor]


class Mitigation:
    """The naive baseline (`none`): each task trains on its own data, nothing held back."""

    def __init__(self, params: MitigationParams, session: Session, seed: int, pad_id: int):
        self.params, self.session, self.seed, self.pad_id = params, session, seed, pad_id

    def examples(self, task_index: int, own: list[TrainExample]) -> list[TrainExample]:
        return own

    def start(self, task_index: int, own: list[TrainExample], resumed_step: int) -> Penalty | None:
        return None

    def finish(self, task_index: int, own: list[TrainExample]) -> None:
        """After the task trained, from the model (EWC's Fisher)."""

    def remember(self, task_index: int, own: list[TrainExample]) -> None:
        """After the task, from its data only (replay's buffer): also run for tasks a resume skips."""

    def prepare_restore(self, task_index: int) -> None:
        """Before a finished task's saved state is loaded on resume (O-LoRA adds the task's LoRA)."""

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        return None

    def trained(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.session.model.named_parameters() if p.requires_grad}


class Replay(Mitigation):
    """A seeded reservoir (Vitter's algorithm R) of `size` examples over every earlier task's training data;
    each later task trains on its own examples plus `fraction` × as many drawn from the buffer (all of it when
    the buffer is smaller)."""

    params: ReplayParams

    def __init__(self, params: ReplayParams, session: Session, seed: int, pad_id: int):
        super().__init__(params, session, seed, pad_id)
        self.buffer: list[TrainExample] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def examples(self, task_index: int, own: list[TrainExample]) -> list[TrainExample]:
        want = min(len(self.buffer), round(self.params.fraction * len(own)))
        return own + random.Random(self.seed + task_index).sample(self.buffer, want)

    def remember(self, task_index: int, own: list[TrainExample]) -> None:
        for example in own:
            self.seen += 1
            if len(self.buffer) < self.params.size:
                self.buffer.append(example)
            elif (slot := self.rng.randrange(self.seen)) < self.params.size:
                self.buffer[slot] = example


class L2sp(Mitigation):
    params: L2spParams

    def start(self, task_index: int, own: list[TrainExample], resumed_step: int) -> Penalty | None:
        if task_index == 0:
            return None
        params = self.trained()  # the task's trained weights, looked up once, not at every step
        anchors = {n: p.detach().clone() for n, p in params.items()}
        return lambda model: penalties.l2sp(params, anchors, self.params.strength)


class Ewc(Mitigation):
    """Online EWC: after each task the diagonal Fisher of the trained weights on `examples` of its examples
    (one example per backward pass), added to the earlier tasks' (times `decay`), and the weights as anchors;
    with `normalize` the Fisher is scaled to mean 1, so `strength` does not depend on the loss's scale."""

    params: EwcParams

    def __init__(self, params: EwcParams, session: Session, seed: int, pad_id: int):
        super().__init__(params, session, seed, pad_id)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchors: dict[str, torch.Tensor] = {}

    def start(self, task_index: int, own: list[TrainExample], resumed_step: int) -> Penalty | None:
        if not self.fisher:
            return None
        params = self.trained()
        return lambda model: penalties.ewc(params, self.anchors, self.fisher, self.params.strength)

    def finish(self, task_index: int, own: list[TrainExample]) -> None:
        session, model = self.session, self.session.model
        recipe, pad_id = session.recipe, self.pad_id
        picked = random.Random(self.seed + task_index).sample(own, min(self.params.examples, len(own)))
        params = self.trained()

        def squared_grads():  # one example at a time; the mean is kept as a running sum, not a list of them
            for example in picked:
                batch = to_device(recipe.objective.kind.collate([example], pad_id), session.device)
                with session.scoring():
                    loss = recipe.objective.loss(model, batch, window_context([batch], recipe.objective_params,
                                                                              session.frozen)).loss
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                yield {n: (g.detach().float() ** 2 if g is not None else torch.zeros_like(p, dtype=torch.float))
                       for (n, p), g in zip(params.items(), grads, strict=True)}

        model.eval()
        fisher = penalties.diagonal_fisher(squared_grads())
        model.train()
        if self.params.normalize:
            mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
            fisher = {n: f / mean.clamp_min(1e-30) for n, f in fisher.items()}
        self.fisher = {n: self.params.decay * self.fisher.get(n, 0) + f for n, f in fisher.items()}
        self.anchors = {n: p.detach().clone() for n, p in params.items()}

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"fisher/{n}": t for n, t in self.fisher.items()},
                **{f"anchor/{n}": t for n, t in self.anchors.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.fisher = {n[len("fisher/"):]: t for n, t in tensors.items() if n.startswith("fisher/")}
        self.anchors = {n[len("anchor/"):]: t for n, t in tensors.items() if n.startswith("anchor/")}


class Lwf(Mitigation):
    """Learning without forgetting: before a task trains, the model as the earlier tasks left it answers
    `examples` of the new task's examples; its top-k next-token log-probabilities at every trained position
    are kept, and each step distils them, one batch of `batch_size` in turn, into the model being trained."""

    params: LwfParams

    def start(self, task_index: int, own: list[TrainExample], resumed_step: int) -> Penalty | None:
        if task_index == 0:
            return None
        session, p = self.session, self.params
        pool = random.Random(self.seed + task_index).sample(own, min(p.examples, len(own)))
        batches = [to_device(session.recipe.objective.kind.collate(pool[i: i + p.batch_size], self.pad_id),
                             session.device)
                   for i in range(0, len(pool), p.batch_size)]
        teachers = []
        session.model.eval()
        with torch.no_grad(), session.scoring():
            for batch in batches:
                logits, mask = self._positions(batch)
                top = torch.log_softmax(logits[mask].float(), dim=-1).topk(p.top_k, dim=-1)  # at T = 1
                teachers.append((top.values, top.indices))
        session.model.train()
        calls = [resumed_step]

        def penalty(model: torch.nn.Module) -> torch.Tensor:
            index = calls[0] % len(batches)
            calls[0] += 1
            with session.scoring():
                logits, mask = self._positions(batches[index])
                values, ids = teachers[index]
                return p.strength * penalties.distillation(logits[mask], values, ids, p.temperature)

        return penalty

    def _positions(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits that predict each trained token, and where those are."""
        out = self.session.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits[:, :-1], batch["labels"][:, 1:] != -100


class Olora(Mitigation):
    """O-LoRA: each task trains a new LoRA of the same shape, the earlier tasks' LoRAs frozen and still
    applied; the penalty keeps the new down-projections orthogonal to the earlier ones. At the end the LoRAs
    are concatenated into one of rank r × tasks (peft's exact `cat` combination), saved as a plain adapter."""

    params: OloraParams

    def __init__(self, params: OloraParams, session: Session, seed: int, pad_id: int):
        super().__init__(params, session, seed, pad_id)
        require_plain_lora(session.recipe.method.name, session.recipe.method_params)
        self.names = ["default"]

    def prepare_restore(self, task_index: int) -> None:
        model = self.session.model
        for index in range(len(self.names), task_index + 1):
            name = f"task{index + 1}"
            model.add_adapter(name, model.peft_config["default"])
            self.names.append(name)
        model.base_model.set_adapter(self.names[: task_index + 1])

    def start(self, task_index: int, own: list[TrainExample], resumed_step: int) -> Penalty | None:
        model = self.session.model
        self.prepare_restore(task_index)
        current = self.names[task_index]
        for name, param in model.named_parameters():
            param.requires_grad = f".{current}." in name and "lora_" in name
        if task_index == 0:
            return None
        layers = [m for m in model.modules() if hasattr(m, "lora_A") and current in m.lora_A]
        now = [m.lora_A[current].weight for m in layers]
        before = [[m.lora_A[name].weight.detach() for m in layers] for name in self.names[:task_index]]
        return lambda m: penalties.orthogonality(now, before, self.params.strength)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.session.model.named_parameters() if "lora_" in n}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        return None  # loaded with the weights (every LoRA's tensors are in the task's saved state)

    def combined(self, out_dir) -> None:
        """The tasks' LoRAs as one plain adapter in `out_dir` (rank r × tasks; the same outputs)."""
        import shutil
        import tempfile
        from pathlib import Path

        model = self.session.model
        model.add_weighted_adapter(self.names, [1.0] * len(self.names), "combined", combination_type="cat")
        with tempfile.TemporaryDirectory(dir=Path(out_dir).parent) as tmp:
            model.save_pretrained(tmp, selected_adapters=["combined"], safe_serialization=True)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for item in (Path(tmp) / "combined").iterdir():
                shutil.move(str(item), Path(out_dir) / item.name)
        model.delete_adapter("combined")


def require_plain_lora(method: str, params) -> None:
    """O-LoRA adds a LoRA per task: the method must be LoRA (or QLoRA) without DoRA's magnitudes."""
    if method not in ("lora", "qlora") or getattr(params, "dora", False):
        raise ConfigError(f"strategy.mitigation 'olora' trains one LoRA per task, not method '{method}'"
                          + (" with dora" if getattr(params, "dora", False) else "")
                          + "\n  fix: use method: lora (without dora), or another mitigation")


MITIGATIONS: dict[str, type[Mitigation]] = {"none": Mitigation, "replay": Replay, "ewc": Ewc, "l2sp": L2sp,
                                            "lwf": Lwf, "olora": Olora}
