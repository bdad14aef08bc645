"""`tuneforge export`: a finished run as a plain Hugging Face model directory (weights, config, tokenizer)
that transformers loads with no tuneforge or peft installed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, RunDirError
from tuneforge.methods import get_method
from tuneforge.methods.base import unchanged
from tuneforge.models import no_progress_bars
from tuneforge.models.digest import sha256_of
from tuneforge.runs.gguf import check_model, check_quants, modelfile, write_gguf
from tuneforge.runs.identity import run_identity
from tuneforge.runs.layout import CONFIG_FILE
from tuneforge.runs.paths import refuse_unsafe_replace, require_new_output, staged
from tuneforge.runs.trained import load_trained

MARKER = "tuneforge_export.json"  # says the directory is an export, which --overwrite may replace


def export_run(run_dir: str | Path, out_dir: str | Path, *, merge: bool, overwrite: bool = False,
               gguf: Sequence[str] = ()) -> Path:
    """Fold what the run trained into the base weights and write the plain model, atomically: a Hugging Face
    directory, or with `gguf` one GGUF file per type named there (the adapter folded in whatever `merge` says)
    and an Ollama Modelfile for the first."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    require_new_output(out_dir, "--out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RunDirError(f"export directory {out_dir} is not empty\n  fix: choose another --out, or pass --overwrite")
    refuse_unsafe_replace(out_dir, MARKER, "export directory", inputs=[run_dir])
    check_quants(gguf)
    model, tokenizer, method_name = merged_model(run_dir, merge or bool(gguf))
    identity = run_identity(run_dir, load_config(run_dir / CONFIG_FILE).run.model)  # what the export was made of
    if gguf:
        check_model(model.config)
    model.config.use_cache = True  # tuneforge turns the KV cache off for training; inference wants it
    with staged(out_dir, "--out") as staging:
        files = {}
        if gguf:
            for quant in gguf:
                files[quant] = write_gguf(model, tokenizer, staging / f"model-{quant}.gguf", quant,
                                          name=run_dir.resolve().name).name
            (staging / "Modelfile").write_text(modelfile(files[gguf[0]], tokenizer))
        else:
            with no_progress_bars():
                model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            portable(staging)
        (staging / MARKER).write_text(json.dumps({"run": str(run_dir.resolve()), "method": method_name,
                                                  "identity_sha256": identity,
                                                  "weights_sha256": {p.name: sha256_of(p) for p in sorted(
                                                      [*staging.glob("*.safetensors"), *staging.glob("*.gguf")])},
                                                  **({"gguf": files} if gguf else {})}, indent=1))
    return out_dir


# what transformers 4.x names what 5.x writes otherwise; 5.x reads either
TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable(directory: Path) -> None:
    """Make a saved model directory readable by transformers 4.50+ as well as 5.x: 5.x keeps rope settings in
    `rope_parameters` (4.x reads `rope_theta`/`rope_scaling` and would silently fall back to its default theta),
    names the dtype `dtype` (4.x: `torch_dtype`) and the generic fast tokenizer `TokenizersBackend` (4.x:
    `PreTrainedTokenizerFast`). The 5.x keys stay."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_path = directory / "tokenizer_config.json"
    if tokenizer_path.is_file():
        settings = json.loads(tokenizer_path.read_text())
        if settings.get("tokenizer_class") in TOKENIZER_CLASSES_4X:
            settings["tokenizer_class"] = TOKENIZER_CLASSES_4X[settings["tokenizer_class"]]
            tokenizer_path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def merged_model(run_dir: Path, merge: bool = True) -> tuple[torch.nn.Module, object, str]:
    """A finished run's model with what it trained folded into the base weights (fp32), its tokenizer and its
    method's name."""
    # the base as stored, widened to fp32, whatever precision training ran in: merging into bf16-rounded weights
    # would change every tensor, those the method never touched included
    trained = load_trained(run_dir, full_precision_base=True, precision_override="fp32")
    method = get_method(trained.config.method.name)
    if method.merge is None:
        raise ConfigError(f"method '{method.name}' cannot be merged into the base weights (it adds computation the "
                          f"base model does not have)\n  fix: deploy {run_dir / method.output_subdir} with the base "
                          "model (tuneforge chat / eval, or peft for peft methods)")
    if method.merge is not unchanged and not merge:
        raise ConfigError(f"the run trained a '{method.name}' adapter; exporting a plain model folds it into the base "
                          "weights\n  fix: pass --merge")
    return method.merge(trained.model).to(torch.float32), trained.tokenizer, method.name
