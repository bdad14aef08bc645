"""Config errors: unknown keys and bad values fail fast with file:line, the key path and the nearest name."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import dump_yaml, load_config
from tuneforge.errors import ConfigError
from tuneforge.methods import validate_method_params

BASE = "model: default\ndata:\n  train: data.jsonl\n"


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_line_and_nearest(tmp_path):
    path = write(tmp_path, BASE + "train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:5" in message
    assert "train.batch_sise" in message
    assert "did you mean 'train.batch_size'" in message


def test_bad_value_names_key(tmp_path):
    path = write(tmp_path, BASE + "train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"run.yaml:5: 'train.lr' = -1"):
        load_config(path)


def test_missing_data_section(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_config(write(tmp_path, "model: default\n"))


def test_overrides_apply_and_type(tmp_path):
    loaded = load_config(write(tmp_path, BASE + "method: lora\n"), ["train.lr=1e-4", "method.r=16",
                                                                  "data.max_seq_len=256"])
    assert loaded.run.train.lr == 1e-4
    assert loaded.run.method.name == "lora" and loaded.run.method.params() == {"r": 16}
    assert loaded.run.data.max_seq_len == 256


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'train.epochs'"):
        load_config(write(tmp_path, BASE), ["train.epoch=2"])


def test_method_params_validated_with_nearest(tmp_path):
    loaded = load_config(write(tmp_path, BASE + "method: {name: lora, rank: 8}\n"))
    with pytest.raises(ConfigError, match=r"(?s)unknown key 'method.rank'.*did you mean 'method.r'"):
        validate_method_params(loaded.run.method)


def test_unknown_method_suggests(tmp_path):
    loaded = load_config(write(tmp_path, BASE + "method: lorra\n"))
    with pytest.raises(ConfigError, match=r"did you mean 'lora'"):
        validate_method_params(loaded.run.method)


def test_invalid_yaml_has_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml:3: invalid YAML: mapping values are not allowed"):
        load_config(write(tmp_path, "model: default\ndata:\n  train: a: b\n"))


def test_secrets_redacted_in_dump(tmp_path):
    loaded = load_config(write(tmp_path, BASE + "method: {name: lora, hub_token: hf_SENTINEL}\n"))
    assert "hf_SENTINEL" not in dump_yaml(loaded.run)


def test_cli_config_error_exit_code_2(tmp_path):
    path = write(tmp_path, BASE + "trian:\n  lr: 1\n")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'train'" in result.output
    assert not (tmp_path / "runs").exists()


def test_override_errors_name_the_override(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'train.lr=-3': 'train.lr' = -3"):
        load_config(write(tmp_path, BASE), ["train.lr=-3"])


def test_unknown_objective_suggests():
    from tuneforge.objectives import get_objective

    with pytest.raises(ConfigError, match=r"(?s)unknown objective 'stf'.*did you mean 'sft'"):
        get_objective("stf")


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("examples/*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    from tuneforge.objectives import get_objective, validate_objective_params
    from tuneforge.runs.trained import resolve_rewards

    loaded = load_config(path)
    validate_method_params(loaded.run.method)
    params = validate_objective_params(loaded.run.objective)
    if get_objective(loaded.run.objective.name).data == "prompts":  # online RL: its reward functions import
        assert resolve_rewards(params, "objective")


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "a b"])
def test_a_task_name_is_a_folder_name_never_a_path(tmp_path, name):
    """A task trains into RUN/adapters/NAME and RUN/tasks/N-NAME: '.' or '..' would be the run itself or its parent."""
    path = write(tmp_path, f"model: default\ndata:\n  train:\n    - {{path: a.jsonl, task: '{name}'}}\n"
                           f"  test:\n    - {{path: b.jsonl, task: ok.name-1}}\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: 'data.train.0.task'.*a task name is also a folder name"):
        load_config(path)
    assert load_config(write(tmp_path, BASE.replace("data.jsonl", "{path: data.jsonl, task: v1.2_x-y}")))
