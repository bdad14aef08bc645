"""Loading causal language models and their tokenizers from a local directory, a hub id, or 'default'."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import ModelConfig
from tuneforge.errors import ModelError
from tuneforge.models import default


def resolve_model_path(cfg: ModelConfig) -> str:
    """'default' -> the cached converted default model; a directory -> itself; anything else -> a hub id."""
    if cfg.path == default.DEFAULT_NAME:
        return str(default.default_model_dir())
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


def load_causal_lm(cfg: ModelConfig, dtype=None):
    """The causal LM in `dtype` (default fp32), in training mode off."""
    import torch
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, resolve_model_path(cfg), cfg, dtype=dtype or torch.float32)
    model.config.use_cache = False
    return model


def _from_pretrained(factory, path: str, cfg: ModelConfig, **kwargs):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return factory.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                       **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{cfg.path}': {str(exc).splitlines()[0]}\n  fix: set model.path to "
                         "a local Hugging Face model directory, or 'default'; hub ids need network access") from None
    finally:
        hf_logging.enable_progress_bar()
