"""Merge and export: a finished run becomes a plain Hugging Face directory that transformers loads alone
(no tuneforge, no peft), with the logits of the unmerged trained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.errors import ConfigError
from tuneforge.runs.export import export_run
from tuneforge.runs.trained import load_trained

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

MERGEABLE = {
    "lora": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    "dora": {"name": "dora", "r": 4, "alpha": 8, "dropout": 0.0},
    "qlora": {"name": "qlora", "r": 4, "alpha": 8, "dropout": 0.0},
    "ia3": {"name": "ia3"},
    "bitfit": {"name": "bitfit"},
    "freeze": {"name": "freeze", "last_layers": 1},
    "full": {"name": "full"},
}

PLAIN_LOAD = """
import sys
sys.modules["peft"] = None  # neither library may be used to load the exports
sys.modules["tuneforge"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ids = torch.load(sys.argv[1])
for export, out in zip(sys.argv[2::2], sys.argv[3::2]):
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, out)
"""
IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def trained_run(tmp_path, model_dir, method: dict, **train_keys):
    config = tiny_config(tmp_path, model_dir, train={"max_steps": 3, "lr": 2e-2, "schedule": "constant", **train_keys},
                         eval={"metrics": ["loss"]})
    config["method"] = method
    return train(config, quiet=True).run_dir


def exports(root, tiny_model_dir) -> dict[str, tuple]:
    """Every mergeable method trained (in the test precision), and LoRA trained with bf16 frozen weights,
    each exported; their logits on IDS computed in one process where neither peft nor tuneforge can be
    imported. name -> (run directory, export directory, logits)."""
    cases = {**{name: (method, {}) for name, method in MERGEABLE.items()},
             "lora-bf16": (MERGEABLE["lora"], {"precision": "bf16"})}
    made = {}
    for name, (method, train_keys) in cases.items():
        (root / name).mkdir()
        run_dir = trained_run(root / name, tiny_model_dir, method, **train_keys)
        made[name] = (run_dir, export_run(run_dir, root / name / "export", merge=True))
    torch.save(IDS, root / "ids.pt")
    arguments = [str(a) for name, (_, export) in made.items() for a in (export, root / f"{name}.pt")]
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(root / "ids.pt"), *arguments], check=True, cwd=root)
    return {name: (run_dir, export, torch.load(root / f"{name}.pt")) for name, (run_dir, export) in made.items()}


# one test, not one per method: the exports are made together (one plain-transformers process loads them all),
# and a module fixture would be made again on each test worker that runs one of them
@pytest.mark.heavy  # `make test-bf16` (numerical) runs it too
def test_merged_exports_load_without_tuneforge_or_peft_and_match(tmp_path, tiny_model_dir):
    made = exports(tmp_path, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        base_logits = base(input_ids=IDS).logits
    for name in sorted(MERGEABLE):
        run_dir, _, exported = made[name]
        # the trained model in fp32, whatever precision the run trained in: what the export promises
        unmerged = load_trained(run_dir, full_precision_base=True, precision_override="fp32").model.cpu()
        with torch.no_grad():
            expected = unmerged(input_ids=IDS).logits
        assert (base_logits - expected).abs().max() > 1e-3, f"{name}: training changed nothing"
        torch.testing.assert_close(exported, expected, atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    a_bf16_run_merges_onto_the_base_as_stored(made["lora-bf16"], tiny_model_dir)


def a_bf16_run_merges_onto_the_base_as_stored(made: tuple, tiny_model_dir) -> None:
    """A run trained with bf16 frozen weights exports the fp32 base plus its adapter: the tensors LoRA never
    touches are the base's, bit for bit, and the logits are peft's own merge of the saved adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file

    run_dir, export, exported = made
    assert json.loads((run_dir / "run.json").read_text())["precision"] == "bf16"
    base_tensors = load_file(next(tiny_model_dir.glob("*.safetensors")))
    exported_tensors = load_file(next(export.glob("*.safetensors")))
    untouched = [n for n in base_tensors if not n.endswith("proj.weight")]
    assert "model.embed_tokens.weight" in untouched
    for name in untouched:
        assert torch.equal(exported_tensors[name], base_tensors[name]), name
    peft_merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                            run_dir / "adapter").merge_and_unload().eval()
    with torch.no_grad():
        expected = peft_merged(input_ids=IDS).logits
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", [{"name": "prompt", "num_virtual_tokens": 2},
                                    {"name": "adapter", "reduction_factor": 8}])
def test_methods_that_cannot_merge_say_so(tmp_path, tiny_model_dir, method):
    run_dir = trained_run(tmp_path, tiny_model_dir, method)
    with pytest.raises(ConfigError, match="cannot be merged"):
        export_run(run_dir, tmp_path / "export", merge=True)
    assert not (tmp_path / "export").exists()


def test_export_command_needs_merge_for_adapters_and_refuses_a_full_directory(tmp_path, tiny_model_dir):
    run_dir = trained_run(tmp_path, tiny_model_dir, MERGEABLE["lora"])
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--merge" in result.output
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x"), "--merge"]).exit_code == 0
    config = json.loads((tmp_path / "x" / "config.json").read_text())  # what transformers 4.x reads, beside 5.x's
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["torch_dtype"] == "float32"
    tokenizer_class = json.loads((tmp_path / "x" / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert tokenizer_class == "PreTrainedTokenizerFast"
    again = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x"), "--merge"])
    assert again.exit_code == 2 and "not empty" in again.output
    # --overwrite replaces an earlier export, but never a directory tuneforge did not write (promise 10)
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x"), "--merge",
                               "--overwrite"]).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "mine"), "--merge", "--overwrite"])
    assert refused.exit_code == 2 and "did not write" in refused.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


OLDEST_TRANSFORMERS = "transformers==4.50.*"  # the oldest the README states: the first to read chat_template.jinja
PORTABLE_LOAD = """
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

export, ids = sys.argv[1], torch.load(sys.argv[2])
model, tokenizer = AutoModelForCausalLM.from_pretrained(export).eval(), AutoTokenizer.from_pretrained(export)
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
messages = [{"role": "user", "content": "Hello <|im_start|> there"}]
print(json.dumps({"version": transformers.__version__, "theta": model.config.rope_theta,
                  "chat": tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                  "ids": tokenizer("Hello <|im_start|> 2024-05-17")["input_ids"]}))
"""


@pytest.mark.slow  # installs transformers 4.50 beside this one (pip --target; TUNEFORGE_TRANSFORMERS4_DIR reuses it)
def test_a_merged_export_loads_in_transformers_4_with_the_same_logits_tokens_and_template(tmp_path, tokenizer):
    import os

    from transformers import AutoTokenizer

    from tuneforge.models.tiny import save_tiny_llama

    # SmolLM2's rope theta, not 4.x's default: a 4.x reading only `rope_parameters` would fall back to 10,000
    tiny_model_dir = save_tiny_llama(tmp_path / "tiny", tokenizer, rope_theta=100000.0)

    target = Path(os.environ.get("TUNEFORGE_TRANSFORMERS4_DIR") or tmp_path / "transformers4")
    if not (target / "transformers").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), OLDEST_TRANSFORMERS],
                       check=True)
    run_dir = trained_run(tmp_path, tiny_model_dir, MERGEABLE["lora"])
    export = export_run(run_dir, tmp_path / "export", merge=True)
    torch.save(IDS, tmp_path / "ids.pt")
    done = subprocess.run([sys.executable, "-c", PORTABLE_LOAD, str(export), str(tmp_path / "ids.pt"),
                           str(tmp_path / "old.pt")], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(target)})
    old = json.loads(done.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4.50")
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "old.pt"), model(input_ids=IDS).logits, atol=1e-5, rtol=0)
    assert old["theta"] == model.config.rope_parameters["rope_theta"] == 100000.0
    messages = [{"role": "user", "content": "Hello <|im_start|> there"}]
    assert old["chat"] == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert old["ids"] == tokenizer("Hello <|im_start|> 2024-05-17")["input_ids"]
