"""`tuneforge merge`: LoRA runs folded into one adapter by peft, written as a run that eval, chat and export
accept; a linear merge weighted (1, 0) answers exactly as the first run; bad requests exit 2 with the fix."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.runs.merge import merge_runs
from tuneforge.runs.trained import load_trained

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    runs = []
    for seed, answer in ((1, "red"), (2, "blue")):  # different seeds: different LoRA A initialisations
        name = answer
        folder = tmp_path_factory.mktemp(name)
        data = write_jsonl(folder / "train.jsonl", [{"prompt": f"q {i}", "completion": f"{answer} {i}"}
                                                    for i in range(8)])
        config = tiny_config(folder, tiny_model_dir, data={"train": str(data), "test": str(data)},
                             train={"max_steps": 3, "lr": 0.05, "seed": seed}, method={"dropout": 0.0},
                             eval={"metrics": ["loss"]})
        runs.append(train(config, quiet=True).run_dir)
    return runs


def logits_of(run_dir, text: str = "q 3") -> torch.Tensor:
    trained = load_trained(run_dir)
    with torch.no_grad():
        return trained.model(**trained.tokenizer(text, return_tensors="pt")).logits.float()


def deltas(run_dir) -> dict[str, torch.Tensor]:
    """Each adapted module's weight change B·A·alpha/r, from the saved adapter."""
    from safetensors.torch import load_file

    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    tensors = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    return {name.replace(".lora_A.weight", ""): tensors[name.replace("lora_A", "lora_B")] @ a * scale
            for name, a in tensors.items() if "lora_A" in name}


def test_a_linear_merge_weighted_one_and_zero_is_the_first_run(two_runs, tmp_path):
    out = merge_runs(two_runs, tmp_path / "merged", how="linear", weights=[1.0, 0.0])
    merged, first, second = deltas(out), deltas(two_runs[0]), deltas(two_runs[1])
    assert merged.keys() == first.keys()
    assert all(torch.allclose(merged[k], first[k], atol=1e-6) for k in merged)
    assert not all(torch.allclose(merged[k], second[k], atol=1e-4) for k in merged)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["merged"]["how"] == "linear"


def test_ties_writes_a_run_that_eval_and_export_accept(two_runs, tmp_path):
    result = CliRunner().invoke(app, ["merge", *map(str, two_runs), "--out", str(tmp_path / "ties"), "--how", "ties",
                                      "--density", "0.5"])
    assert result.exit_code == 0, result.output
    merged = logits_of(tmp_path / "ties")
    assert torch.isfinite(merged).all()
    ties, first = deltas(tmp_path / "ties"), deltas(two_runs[0])
    assert not all(torch.allclose(ties[k], first[k], atol=1e-4) for k in ties)  # both adapters count
    data = yaml.safe_load((two_runs[0] / "config.yaml").read_text())["data"]["train"][0]["path"]
    scored = CliRunner().invoke(app, ["eval", str(tmp_path / "ties"), "--data", data, "--metrics", "loss"])
    assert scored.exit_code == 0, scored.output
    exported = CliRunner().invoke(app, ["export", str(tmp_path / "ties"), "--out", str(tmp_path / "hf"), "--merge"])
    assert exported.exit_code == 0, exported.output
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokens = load_trained(tmp_path / "ties").tokenizer("q 3", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**tokens).logits, merged, atol=1e-3)


@pytest.mark.parametrize(("args", "message"), [
    (["--how", "average"], "not a merge"),
    (["--weights", "1"], "one weight per run"),
    (["--weights", "a,b"], "not numbers"),
    (["--density", "0"], "must be in (0, 1]"),
    (["--weights", "nan,nan"], "finite number"),
    (["--weights", "inf,1"], "finite number"),
    (["--weights", "1e308,1e308", "--how", "linear"], "NaN or inf"),  # each finite, the merge is not
    (["--weights", "1e308,1e308", "--how", "ties"], "NaN or inf"),
])
def test_bad_requests_exit_2_with_the_fix(two_runs, tmp_path, args, message):
    result = CliRunner().invoke(app, ["merge", *map(str, two_runs), "--out", str(tmp_path / "m"), *args])
    assert result.exit_code == 2 and message in result.output and "fix:" in result.output
    assert not (tmp_path / "m").exists()


def test_only_lora_runs_merge(two_runs, tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, eval={"metrics": ["loss"]})
    config["method"] = {"name": "ia3"}
    ia3 = train(config, quiet=True).run_dir
    result = CliRunner().invoke(app, ["merge", str(two_runs[0]), str(ia3), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "LoRA" in result.output


def test_a_dora_run_is_never_merged_as_plain_lora(two_runs, tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, eval={"metrics": ["loss"]},
                         method={"dora": True})
    dora = train(config, quiet=True).run_dir
    result = CliRunner().invoke(app, ["merge", str(two_runs[0]), str(dora), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "dora" in result.output and "fix:" in result.output
    assert not (tmp_path / "m").exists()
