"""Atomic, verified checkpoints of everything a resumed run needs to continue bit-for-bit.

A checkpoint is written into a temporary directory, every file fsynced, a manifest with the sha256 of
each file written last, and the directory renamed into place. Resume takes the newest checkpoint whose
manifest verifies. Tensors go to safetensors, everything else to JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from tuneforge.errors import CheckpointError, TrainingError
from tuneforge.models.digest import sha256_of

MANIFEST = "manifest.json"
PREFIX = "step-"
FORMAT_VERSION = 1


Snapshot = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int) -> Path:
    return write_checkpoint(root, step, snapshot(model, optimizer), state, keep_last)


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
    """The trainable weights and the optimizer's state, whole: under FSDP every process must take it (the
    shards are gathered), and the main one writes it, so a checkpoint is the same for any number of processes."""
    return (trainable_state(model), *_flatten_optimizer(optimizer))


def write_checkpoint(root: Path, step: int, taken: Snapshot, state: dict[str, Any], keep_last: int) -> Path:
    weights, tensors, meta = taken
    require_finite({**weights, **tensors}, f"the checkpoint of step {step}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    staging = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_file(weights, staging / "trainable.safetensors")
        save_file(tensors, staging / "optimizer.safetensors")
        save_file({"torch_cpu": torch.get_rng_state()} | _cuda_rng(), staging / "rng.safetensors")
        _write_json(staging / "optimizer.json", meta)
        _write_json(staging / "state.json", state | {"step": step, "format": FORMAT_VERSION})
        files = sorted(p.name for p in staging.iterdir())
        for name in files:
            _fsync(staging / name)
        _write_json(staging / MANIFEST, {"step": step, "files": {n: sha256_of(staging / n) for n in files}})
        _fsync(staging / MANIFEST)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(root, keep_last)
    return final


def require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Nothing NaN or inf is ever saved: the previous good checkpoint stays the newest."""
    bad = next((name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise TrainingError(f"not saving {what}: '{bad}' holds NaN or inf values\n  fix: lower train.lr, keep "
                            "train.max_grad_norm set, or train in fp32; --resume continues from the last good "
                            "checkpoint")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (gathered from the processes' shards under FSDP: a collective)."""
    return {name: _whole(p).detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _laid_out_as(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole saved tensor as `param` holds it: this process's shard of it under FSDP (no communication:
    every process read the same file)."""
    if isinstance(param, DTensor) and whole.shape == param.shape:
        return distribute_tensor(whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return whole


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (the write did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable manifest ({exc})"
    for name, digest in files.items():
        if not (path / name).is_file():
            return f"missing {name}"
        if sha256_of(path / name) != digest:
            return f"{name} does not match its sha256"
    return None


def step_of(path: Path | None) -> int | None:
    """The step of a checkpoint directory (step-00000012 -> 12)."""
    return int(path.name.split("-")[-1]) if path is not None else None


def remove_unfinished(root: Path) -> None:
    """Delete the staging directories of writes a killed run never finished (the caller holds the run's
    lock, so no live writer owns them)."""
    for path in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint under root, and a note for each newer one that was skipped."""
    skipped = []
    if not root.is_dir():
        return None, skipped
    for path in sorted(root.glob(f"{PREFIX}*"), reverse=True):
        problem = verify(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    return None, skipped


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore trainable weights, optimizer and RNG state; return the saved loop state."""
    restore_trainable(model, load_file(path / "trainable.safetensors"), str(path))
    meta = json.loads((path / "optimizer.json").read_text())
    saved = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta)
    ordered = [p for group in optimizer.param_groups for p in group["params"]]  # the state dict's numbering
    for index, slots in saved["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                slots[key] = _laid_out_as(value, ordered[index])
    optimizer.load_state_dict(saved)
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available() and "torch_cuda" in rng:
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return json.loads((path / "state.json").read_text())


def restore_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy whole trainable weights (a checkpoint's, or gathered from FSDP shards) into the model."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks trainable parameters such as '{missing[0]}' — it was "
                              "written by a run with a different method or model\n  fix: resume with the "
                              "original config, or start a new run in another output.dir")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(_laid_out_as(tensor, params[name]))


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = _whole(value).detach().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _cuda_rng() -> dict[str, torch.Tensor]:
    return {"torch_cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}


def _prune(root: Path, keep_last: int) -> None:
    complete = [p for p in sorted(root.glob(f"{PREFIX}*")) if (p / MANIFEST).is_file()]
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
