"""Data-parallel training on torch.distributed: one process per device, launched by `torchrun` (or by
`tuneforge train --nproc N`, which runs torchrun's own launcher), DDP for the gradients.

The promise is the same training as one process with the same global batch. The global batch is the config's:
`train.batch_size` x `train.grad_accum` examples per optimizer step, whatever the number of processes. Every
process builds the same seeded step plan, and each takes its share of every step's accumulation window (the
micro-batches `rank, rank + size, ...`); the loss is normalised by the whole window's label tokens (an
all-reduce of the counts) and DDP sums the gradients, so the update equals one process's. Dropout masks are
seeded per micro-batch, not per process, so they agree too.

Only the main process (rank 0) writes: the run directory, metrics, checkpoints and results. While it does work
of its own (checks, checkpoints, evaluation) the others wait on a separate gloo group with a long timeout; the
training collectives run under `train.collective_timeout_s` (60 s by default), so a process that stalls or dies
surfaces as an error naming the step within that time, never as a 30-minute watchdog hang.

The process group is process-global state (as torch.distributed's own is): `join_world` starts it once, and
`world()` is what the loop asks.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tuneforge.errors import ConfigError, TrainingError, TuneforgeError

# how long the other processes wait while the main one works alone (checks, checkpoint writes, evaluation)
SOLO_WORK_TIMEOUT = timedelta(hours=3)


class FollowerError(TuneforgeError):
    """The main process stopped on an error it has already reported; the other processes stop quietly."""

    reported = True


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    control: Any = None  # a gloo group with a long timeout: waiting on the main process's own work
    sharded: bool = False  # FSDP2 (train.distributed: fsdp): weights, gradients and optimizer state in shards

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """`compute()` on the main process only, its result (or its user error) handed to every process."""
        if not self.active:
            return compute()
        box: list[Any] = [None]
        if self.main:
            try:
                box = [("ok", compute())]
            except TuneforgeError as exc:
                box = [("error", str(exc))]
                dist.broadcast_object_list(box, src=0, group=self.control)
                raise
        dist.broadcast_object_list(box, src=0, group=self.control)
        kind, value = box[0]
        if kind == "error":
            raise FollowerError(value)
        return value

    def on_model(self, compute: Callable[[], Any]) -> Any:
        """Work on the model (an evaluation): under FSDP every process runs it, since each forward gathers the
        shards, and the main process's result is the one kept; otherwise the main process runs it alone."""
        if not self.sharded:
            return self.from_main(compute)
        box = [compute()]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def share(self, window: Sequence[list]) -> list[tuple[int, list]]:
        """This process's micro-batches of a step's window, with their index in the window."""
        return [(index, micro) for index, micro in enumerate(window) if index % self.size == self.rank]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each figure summed over the processes (one all-reduce)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loop runs forwards and backwards through, its gradients summed over the processes
        (each process's loss is already its share of the window's normalised loss): `model` itself in one
        process; a DDP wrapper; or, under FSDP, `model` sharded in place, each transformer block (the model's
        own `_no_split_modules`) a unit that gathers its weights for its forward and backward."""
        if not self.active:
            return model
        if self.sharded:
            from torch.distributed.fsdp import FSDPModule, fully_shard

            blocks = {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or ()}
            for module in list(model.modules()):
                if type(module).__name__ in blocks:
                    fully_shard(module)
            fully_shard(model)
            for unit in model.modules():  # summed, not averaged (each unit reduces its own gradients)
                if isinstance(unit, FSDPModule):
                    unit.set_gradient_divide_factor(1.0)
                    unit.set_force_sum_reduction_for_comms(True)  # a plain sum: gloo has no pre-scaled one
            return model
        wrapped = _DataParallel(model, forward_sync_buffers=False)
        wrapped.register_comm_hook(None, _sum_gradients)
        return wrapped

    @contextmanager
    def no_sync(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Gradients of every micro-batch but a step's last are only accumulated; the last one's exchange
        carries them all."""
        if last or not self.active:
            yield
        elif self.sharded:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        else:
            with model.no_sync():
                yield


class _DataParallel(DistributedDataParallel):
    """DDP that passes attribute access through to the model, so objectives reach its head, config and
    adapters (`model.get_output_embeddings()`) the same in one process or many."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _sum_gradients(state, bucket):  # no annotations: DDP checks them, and they are strings here
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


_WORLD = World()


def world() -> World:
    return _WORLD


def join_world(timeout_s: int, how: str, where: str) -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR ...); one
    process without it. NCCL on GPUs (each process on its LOCAL_RANK's device), gloo on CPUs."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or _WORLD.active:
        return _WORLD
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"{where}: process {local} on this machine has no GPU of its own (there are "
                              f"{torch.cuda.device_count()})\n  fix: start at most {torch.cuda.device_count()} "
                              "processes per machine (--nproc / torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=SOLO_WORK_TIMEOUT)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), control, sharded=how == "fsdp")
    return _WORLD


def leave_world() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def require_one_process(what: str, where: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{where}: {what} runs in one process\n  fix: start it without --nproc or torchrun "
                          "(data-parallel training is for strategy: single)")


def check_world(world: World, grad_accum: int, online: bool, where: str) -> None:
    """Each process needs at least one micro-batch of every full window; FSDP's forwards are collective, so
    every process must run as many: rollouts of different lengths would not."""
    if grad_accum < world.size:
        raise ConfigError(f"{where}: grad_accum is {grad_accum} but {world.size} processes share each step's "
                          f"micro-batches, so some would have none\n  fix: set train.grad_accum to a multiple of "
                          f"{world.size} (the global batch is train.batch_size x train.grad_accum, whatever the "
                          "number of processes; lower train.batch_size to keep it)")
    if world.sharded and online:
        raise ConfigError(f"{where}: distributed is fsdp, but an online objective samples completions of "
                          "different lengths in each process, and FSDP's forwards must run in step\n  fix: set "
                          "train.distributed: ddp")


@contextmanager
def peers_guard(where: Callable[[], str], timeout_s: int) -> Iterator[None]:
    """A collective that failed, because a peer died (its connection closed) or did not answer in time, as a
    located error rather than a traceback."""
    if not world().active:
        yield
        return
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if not isinstance(exc, dist.DistError) and "gloo" not in str(exc):  # gloo's are plain RuntimeErrors
            raise
        detail = re.sub(r"^.*\.(cc|cpp):\d+\] ", "", str(exc).strip().splitlines()[0]).split(". ")[0][:200]
        raise TrainingError(f"process {world().rank} {where()}: another training process stopped or did not answer "
                            f"within {timeout_s} s ({detail})\n  fix: see the "
                            "other processes' errors; `--resume` continues from the last checkpoint, with any "
                            "number of processes") from None


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launch(nproc: int, args: Sequence[str]) -> None:
    """Run `tuneforge ARGS` in `nproc` processes on this machine through torchrun's launcher (the standalone
    rendezvous of `torchrun --standalone`); if one process fails, the others are stopped and the failure is
    raised naming the process."""
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failure is ours to say
    if "OMP_NUM_THREADS" not in os.environ:  # the cores shared out, not torchrun's blanket 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.5,
                          shutdown_timeout=10)
    try:
        elastic_launch(config, sys.executable)("-m", "tuneforge", *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode == TuneforgeError.exit_code:  # that process printed its message; the others were stopped
            raise FollowerError(f"process {rank} stopped on an error") from None
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        raise TrainingError(f"training process {rank} (pid {failure.pid}) {how}; the other processes were "
                            f"stopped\n  fix: see its output above (a kill by SIGKILL is often the kernel's "
                            f"out-of-memory killer: see `dmesg`); `--resume` continues from the last checkpoint, "
                            f"with any number of processes") from None

