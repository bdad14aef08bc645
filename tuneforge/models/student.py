"""Making a distillation student: a smaller model of the teacher's own family, the same embeddings, final norm
and head, and a subset of its decoder layers (spread evenly from the first to the last, as DistilBERT and
Sanh et al. initialise a student from every other teacher layer), written as a plain Hugging Face directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneforge.config import ModelConfig
from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.digest import model_digest, sha256_of
from tuneforge.models.load import load_causal_lm, load_tokenizer

# where a causal LM keeps its stack of decoder layers, by the families transformers implements
_LAYER_STACKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def kept_layers(total: int, layers: int) -> list[int]:
    """`layers` indices out of `total`, evenly spread and always keeping the first and the last layer (the one
    next to the embeddings and the one next to the head matter most)."""
    if layers == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (layers - 1)) for i in range(layers)})


def layer_stack(model) -> tuple[torch.nn.Module, str]:
    """The model's decoder-layer list and its attribute path; a family without a known one is refused."""
    for path in _LAYER_STACKS:
        owner: object = model
        for part in path.split("."):
            owner = getattr(owner, part, None)
        if isinstance(owner, torch.nn.ModuleList):
            return owner, path
    raise ModelError(f"{type(model).__name__}: its decoder layers are not at any of {', '.join(_LAYER_STACKS)}, so "
                     "tuneforge cannot pick a subset of them\n  fix: build the student yourself with the model's "
                     "own config (fewer layers) and give its directory as model.path")


def shrink(model, layers: int) -> list[int]:
    """Keep `layers` of the model's decoder layers in place (renumbering their cache slots and the config);
    returns the teacher's indices of the kept ones."""
    stack, path = layer_stack(model)
    if len(stack) < 2:
        raise ConfigError(f"--layers {layers}: the model has a single decoder layer, so no student can have fewer\n  "
                          "fix: make the student from a model with more layers")
    if not 1 <= layers < len(stack):
        raise ConfigError(f"--layers {layers}: the model has {len(stack)} decoder layers\n  fix: ask for 1 to "
                          f"{len(stack) - 1}")
    kept = kept_layers(len(stack), layers)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], torch.nn.ModuleList(stack[i] for i in kept))
    for new, layer in enumerate(getattr(parent, path.rsplit(".", 1)[-1])):
        for module in layer.modules():  # the KV cache is indexed by each attention's layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config
    for key in _LAYER_COUNT_KEYS:
        if hasattr(config, key):
            setattr(config, key, len(kept))
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding / full)
        config.layer_types = [config.layer_types[i] for i in kept]
    return kept


STUDENT_MARKER = "tuneforge_student.json"  # where the student came from, and the digests of its weights


def make_student(source: ModelConfig, layers: int, out: Path, *, model=None, tokenizer=None,
                 source_sha256: str | None = None) -> dict:
    """Write the student into `out` (a new or empty directory: `api.make_student` has it written whole or not at all),
    with tuneforge_student.json saying what it was made from (`source_sha256`: the teacher's identity, by default the
    digest of `source`'s files) and the sha256 of each weight file. `model` / `tokenizer`: the teacher already
    loaded (a tuneforge run, merged), else loaded from `source`."""
    out = Path(out)
    model = model if model is not None else load_causal_lm(source)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
    before = sum(p.numel() for p in model.parameters())
    total = len(layer_stack(model)[0])
    kept = shrink(model, layers)
    model.config.use_cache = True  # a plain Hugging Face model again: generation uses its cache
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / STUDENT_MARKER).write_text(json.dumps({
        "from": source.path, "source_sha256": source_sha256 or model_digest(source), "kept_layers": kept,
        "weights_sha256": {p.name: sha256_of(p) for p in sorted(out.glob("*.safetensors"))}}, indent=1))
    return {"teacher_layers": total, "kept_layers": kept, "teacher_parameters": before,
            "student_parameters": sum(p.numel() for p in model.parameters())}
