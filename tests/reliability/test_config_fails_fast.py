"""Promise 7: an unknown key or an invalid value in the config fails at once, with the key path and the
nearest valid name, before PyTorch or any model is loaded and before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from tuneforge.cli import main
sys.argv = ["tuneforge", "train", sys.argv[1], *sys.argv[2:]]
try:
    main()
except SystemExit as exc:
    print("exit", exc.code, "torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(("body", "overrides", "expected"), [
    ("train: {batch_sise: 4}", [], "unknown key 'train.batch_sise'\n  fix: did you mean 'train.batch_size'?"),
    ("train: {lr: -1}", [], "train.lr"),
    ("train: {max_steps: 2}", ["train.precison=fp32"], "did you mean 'train.precision'?"),
    # a method's or objective's own keys are checked before PyTorch loads too
    ("train: {max_steps: 2}", ["method.rank=8"], "unknown key 'method.rank' for method 'lora'\n  fix: did you "
                                                 "mean 'method.r'?"),
    ("objective: {name: dpo, beta: -1}", [], "'objective.beta' = -1: Input should be greater than 0"),
    ("objective: {name: grpo, rewards: [number_match], group_sise: 4}", [], "did you mean 'objective.group_size'?"),
    ("train: {max_steps: 2}", ["method.name=lorra"], "unknown method 'lorra'"),
    # and the strategy's
    ("strategy: singel", [], "unknown strategy 'singel' (config key 'strategy.name')\n  fix: did you mean "
                             "'single'?"),
    ("strategy: {name: single, phases: 2}", [], "unknown key 'strategy.phases' for strategy 'single'"),
])
def test_config_errors_fail_before_torch_loads(tmp_path, body, overrides, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model: default\nmethod: {{name: lora}}\ndata: {{train: quickstart:train}}\n{body}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n")
    result = subprocess.run([sys.executable, "-c", CHECK, str(config), *overrides], capture_output=True, text=True,
                            check=False, env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": ""})
    assert expected in result.stderr, result.stderr
    assert "exit 2 torch imported: False" in result.stderr
    assert not (tmp_path / "run").exists()
