"""Loading causal language models and their tokenizers from a local directory, a hub id, or 'default'."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tuneforge.config import ModelConfig
from tuneforge.errors import ModelError
from tuneforge.models import default, no_progress_bars


def resolve_model_path(cfg: ModelConfig) -> str:
    """'default' -> the cached converted default model; a directory -> itself; anything else -> a hub id."""
    if cfg.path == default.DEFAULT_NAME:
        return str(default.default_model_dir())
    if cfg.path == default.ENCODER_NAME:
        return str(default.encoder_dir())
    path = Path(cfg.path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model path '{cfg.path}' has no config.json, so it is not a Hugging Face model "
                             "directory\n  fix: point model.path at a directory written by save_pretrained")
        return str(path)
    if cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") > 1:
        raise ModelError(f"model path '{cfg.path}' does not exist\n  fix: check model.path")
    return cfg.path


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer, with a pad token (EOS when the model has none). Loads no model weights."""
    from transformers import AutoTokenizer

    if cfg.path == default.DEFAULT_NAME:
        tokenizer = default.load_default_tokenizer()
    else:
        tokenizer = _from_pretrained(AutoTokenizer, resolve_model_path(cfg), cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"the tokenizer of '{cfg.path}' is not a fast tokenizer; tuneforge needs token offsets "
                         "to place label masks\n  fix: provide tokenizer.json with the model")
    return tokenizer


def load_causal_lm(cfg: ModelConfig, dtype=None, **extra):
    """The causal LM in `dtype` (default fp32), in training mode off. `extra` goes to from_pretrained (e.g. a
    quantization config, which also places the model on its device as it loads)."""
    return load_model(cfg, dtype=dtype, **extra)


@dataclass(frozen=True)
class Head:
    """A classification task's head: what it predicts and its classes (none for regression: one output)."""

    task: str  # sequence_classification | token_classification | regression
    names: tuple[str, ...] = ()

    @property
    def auto_class(self) -> str:
        return "AutoModelForTokenClassification" if self.task == "token_classification" else \
            "AutoModelForSequenceClassification"

    def config_kwargs(self) -> dict:
        if self.task == "regression":
            return {"num_labels": 1, "problem_type": "regression"}
        problem = {"sequence_classification": "single_label_classification"}.get(self.task)
        return {"num_labels": len(self.names), "id2label": dict(enumerate(self.names)),
                "label2id": {n: i for i, n in enumerate(self.names)}, **({"problem_type": problem} if problem else {})}


def load_model(cfg: ModelConfig, head: Head | None = None, dtype=None, **extra):
    """The model in `dtype` (default fp32), frozen, in eval mode: a causal LM, or with `head` the model class of
    that classification task, its head new (seeded by the caller) and sized for the classes. The config's
    dropout overrides apply. `extra` goes to from_pretrained (e.g. a quantization config, which also places
    the model on its device as it loads)."""
    import torch
    import transformers

    if "quantization_config" in extra:
        extra.setdefault("device_map", {"": 0} if torch.cuda.is_available() else "cpu")
    path = resolve_model_path(cfg)
    _refuse_pickle_only(path, cfg)
    factory = getattr(transformers, head.auto_class if head else "AutoModelForCausalLM")
    kwargs = {**(head.config_kwargs() if head else {}), **dropout_overrides(cfg, path)}
    # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when it is loaded
    with _quiet_new_head():
        model = _from_pretrained(factory, path, cfg, dtype=dtype or torch.float32, use_safetensors=True,
                                 **kwargs, **extra)
    if head and getattr(model.config, "pad_token_id", None) is None:
        # a decoder with a classification head finds each sequence's last token by the padding id
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    model.config.use_cache = False
    # frozen until a method chooses what it trains: `requires_grad` then marks the trained parameters, which
    # stay fp32 when the frozen ones are cast to bf16 (in training and when a trained run is loaded again)
    model.requires_grad_(False)
    return model


# the names model configs give their dropout: BERT/RoBERTa/DeBERTa, Llama-style, GPT-2, DistilBERT
HIDDEN_DROPOUT = ("hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout")
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def dropout_overrides(cfg: ModelConfig, path: str) -> dict:
    """The model config's dropout keys set to `model.hidden_dropout` / `model.attention_dropout`; a model with
    no such key is refused rather than silently left as it is."""
    from transformers import AutoConfig

    wanted = {keys: value for keys, value in ((HIDDEN_DROPOUT, cfg.hidden_dropout),
                                              (ATTENTION_DROPOUT, cfg.attention_dropout)) if value is not None}
    if not wanted:
        return {}
    config = _from_pretrained(AutoConfig, path, cfg)
    out = {}
    for keys, value in wanted.items():
        found = [k for k in keys if hasattr(config, k)]
        if not found:
            which = "hidden_dropout" if keys is HIDDEN_DROPOUT else "attention_dropout"
            raise ModelError(f"model '{cfg.path}' ({config.model_type}) has no {which.replace('_', ' ')} setting in "
                             f"its config (looked for {', '.join(keys)})\n  fix: remove model.{which}")
        out.update(dict.fromkeys(found, value))
    return out


@contextlib.contextmanager
def _quiet_new_head():
    """transformers warns that a classification head is newly initialised: that is the point of loading it."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _refuse_pickle_only(path: str, cfg: ModelConfig) -> None:
    local = Path(path)
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise ModelError(f"model '{cfg.path}' has only pickled weights ({next(local.glob('*.bin')).name}); "
                         "tuneforge loads safetensors only, since unpickling a file can run any code in it\n  fix: "
                         "convert it once where you trust the file: AutoModelForCausalLM.from_pretrained(DIR)"
                         ".save_pretrained(NEW_DIR) writes safetensors")


def _from_pretrained(factory, path: str, cfg: ModelConfig, **kwargs):
    hub_id = not Path(path).exists()
    try:
        with no_progress_bars():
            if hub_id:
                cached = _from_local_cache(factory, path, cfg, **kwargs)
                if cached is not None:
                    return cached
                _require_hub(cfg.path)
            return factory.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                           **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{cfg.path}': {str(exc).splitlines()[0]}\n  fix: set model.path to "
                         "a local Hugging Face model directory, or 'default'; hub ids need network access") from None


def _from_local_cache(factory, path: str, cfg: ModelConfig, **kwargs):
    try:
        return factory.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                       local_files_only=True, **kwargs)
    except (OSError, ValueError):
        return None


def _require_hub(model_id: str) -> None:
    """Fail at once, instead of after a minute of retries, when the hub cannot be reached at all."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        reachable = not offline and bool(socket.getaddrinfo(host, 443))
    except OSError:
        reachable = False
    if not reachable:
        raise ModelError(f"model '{model_id}' is not in the local Hugging Face cache and the hub ({host}) cannot be "
                         "reached from this machine\n  fix: download it where there is network and set model.path "
                         "to that directory, or use model: default")
