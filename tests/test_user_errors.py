"""Every user error ends with exit code 2 and a message that says where and what to do, never a traceback,
and nothing half-written: each case below once ended with exit 1 and a traceback (issue 13, finding 6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tuneforge.cli import app

runner = CliRunner()


def refused(args: list[str], *words: str):
    """Run the command line in this process; it must exit 2 with a message holding `words`, and no traceback."""
    result = runner.invoke(app, args)
    output = result.output  # stdout and stderr together
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    for word in words:
        assert word in output, (word, output)
    return output


def config_file(tmp_path: Path, model_dir: Path, **sections) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, model_dir, **sections)))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Path:
    tmp_path = tmp_path_factory.mktemp("trained")
    path = config_file(tmp_path, tiny_model_dir, train={"max_steps": 1}, eval={"metrics": ["loss"]})
    assert runner.invoke(app, ["train", str(path), "--quiet"]).exit_code == 0
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------- the config


@pytest.mark.parametrize(("override", "words"), [
    ("train.epochs=.inf", ["'train.epochs' = inf", "finite"]),
    ("train.lr=.inf", ["'train.lr' = inf", "finite"]),
    ("train.lr=.nan", ["'train.lr' = nan"]),
    ("train.epochs=1e9", ["'train.epochs' = '1e9'", "10000"]),
    (f"train.seed={10**23}", ["'train.seed'", "4294967295"]),
])
def test_values_no_run_can_use_fail_at_config_time(tmp_path, tiny_model_dir, override, words):
    path = config_file(tmp_path, tiny_model_dir)
    started = time.perf_counter()
    refused(["train", str(path), override], *words)
    assert time.perf_counter() - started < 5 and not (tmp_path / "run").exists()


def test_a_binary_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    refused(["train", str(path)], "run.yaml", "not a UTF-8 text file")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    refused(["train", str(path)], "run.yaml", "aliases")
    assert time.perf_counter() - started < 5


def test_a_deeply_nested_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(["train", str(path)], "run.yaml", "nested too deeply")


def test_a_relative_model_path_is_relative_to_the_config_file(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "models" / "tiny")
    config = tiny_config(project, tiny_model_dir, train={"max_steps": 1}, eval={"metrics": []})
    config["model"] = "models/tiny"
    config["output"]["dir"] = "run"
    (project / "run.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # elsewhere: data and model resolve against the config file alike
    result = runner.invoke(app, ["train", str(project / "run.yaml"), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["path"] == str(project / "models" / "tiny")


# ----------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(("record", "words"), [
    ('{"prompt": "' + "[" * 0 + 'q", "completion": "\\ud800"}', [":1:", "completion", "surrogate"]),
    ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "a"}', [":1:", "nested too deeply"]),
])
def test_records_that_break_the_reader(tmp_path, tiny_model_dir, record, words):
    (tmp_path / "bad.jsonl").write_text(record + "\n")
    path = config_file(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "bad.jsonl"), "test": None})
    refused(["train", str(path)], "bad.jsonl", *words)
    assert not (tmp_path / "run").exists()


def test_a_file_that_fails_to_parse_is_not_echoed(tmp_path, tiny_model_dir):
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$SECRETSALT$SECRETHASHSECRETHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    (tmp_path / "data.csv").symlink_to(secret)
    path = config_file(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "data.csv"), "test": None})
    output = refused(["train", str(path)], "data.csv:2", "cannot tell the record format")
    assert "SECRET" not in output


# ----------------------------------------------------------------------------------------- outputs


def test_an_output_dir_that_is_a_file_or_under_one(tmp_path, tiny_model_dir):
    (tmp_path / "taken").write_text("a file")
    path = config_file(tmp_path, tiny_model_dir)
    refused(["train", str(path), f"output.dir={tmp_path / 'taken'}"], "output.dir", "is a file")
    refused(["train", str(path), f"output.dir={tmp_path / 'taken' / 'run'}"], "output.dir", "is a file")
    assert (tmp_path / "taken").read_text() == "a file"


def test_an_output_dir_that_cannot_be_written_fails_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    import tuneforge.engine.session as run_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model loaded before the output directory was checked")

    monkeypatch.setattr(run_module, "load_model", must_not_load)
    path = config_file(tmp_path, tiny_model_dir)
    refused(["train", str(path), "output.dir=/proc/tuneforge-run"], "output.dir", "cannot write")


def test_export_and_feedback_export_into_a_file(tmp_path, trained):
    (tmp_path / "file").write_text("keep")
    refused(["export", str(trained), "--out", str(tmp_path / "file"), "--merge"], "--out", "is a file")
    from tuneforge.feedback.store import FeedbackStore

    FeedbackStore(tmp_path / "feedback.db")
    refused(["feedback", "export", "--db", str(tmp_path / "feedback.db"), "--out", str(tmp_path / "file")],
            "--out", "is a file")
    assert (tmp_path / "file").read_text() == "keep"


def test_outputs_are_written_whole_never_through_a_symlink_and_readable_by_others(tmp_path, trained, tiny_model_dir):
    """Issue 30, findings 10 and 11: `student make` / `merge --out` a symlink gave tracebacks; a killed `student make`
    or `export` left random-named hidden staging folders behind, and their outputs were mode 0700."""
    import os

    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    for args in (["student", "make", "--from", str(tiny_model_dir), "--layers", "1"], ["merge", str(trained),
                 str(trained)], ["export", str(trained), "--merge"]):
        refused([*args, "--out", str(link)], "--out", "is a symlink", "fix:")
    assert link.is_symlink() and not any(target.iterdir())
    stale = tmp_path / ".student.tuneforge-staging"  # what a student make killed mid-way leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    student = tmp_path / "student"
    made = runner.invoke(app, ["student", "make", "--from", str(tiny_model_dir), "--layers", "1", "--out",
                               str(student)])
    assert made.exit_code == 0, made.output
    assert not stale.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    umask = os.umask(0)
    os.umask(umask)
    assert student.stat().st_mode & 0o777 == 0o777 & ~umask  # as any directory made here, not 0700
    refused(["student", "make", "--from", str(student), "--layers", "1", "--out", str(tmp_path / "smaller")],
            "a single decoder layer", "fix:")
    assert not (tmp_path / "smaller").exists()


@pytest.mark.parametrize("command", [["feedback", "stats"], ["feedback", "export", "--out", "x"]])
def test_a_feedback_db_that_is_not_sqlite(tmp_path, command):
    (tmp_path / "notes.db").write_text("not a database\n")
    refused([*command, "--db", str(tmp_path / "notes.db")], "notes.db", "not a tuneforge feedback database")


# ------------------------------------------------------------------------------------- eval and chat


def test_eval_options_and_data_kind(tmp_path, trained):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}])
    refused(["eval", str(trained), "--data", str(data), "--metrics", "accuracy"], "--metrics", "accuracy",
            "exact_match")
    refused(["eval", str(trained), "--data", str(data), "--batch-size", "0"], "batch-size")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    refused(["eval", str(trained), "--data", str(pairs)], "pairs.jsonl:1", "does not train on pairs")
    rated = write_jsonl(tmp_path / "rated.jsonl", [{"prompt": "q", "completion": "a", "label": False}])
    refused(["eval", str(trained), "--data", str(rated)], "rated.jsonl:1", "whatever its label")


def test_eval_output_is_checked_before_anything_is_scored(tmp_path, trained, monkeypatch):
    """Issue 30, finding 10: an --output that is a directory was found only after the whole evaluation ran."""
    from tuneforge.runs import trained as trained_module

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}])
    with monkeypatch.context() as patched:
        patched.setattr(trained_module, "load_trained", lambda *a, **k: (_ for _ in ()).throw(
            AssertionError("the run loaded before --output was checked")))
        refused(["eval", str(trained), "--data", str(data), "--output", str(tmp_path)], "--output", "is a directory")
        (tmp_path / "file").write_text("keep")
        refused(["eval", str(trained), "--data", str(data), "--output", str(tmp_path / "file" / "x.json")],
                "--output", "is a file")
        refused(["eval", str(trained), "--lm-eval", ",,,"], "--lm-eval names no task", "fix:")
        refused(["eval", str(trained), "--lm-eval", "x", "--lm-eval-include", str(tmp_path / "none")],
                "--lm-eval-include", "not a directory")
    out = tmp_path / "new" / "folder" / "scores.json"  # a missing folder is made
    assert runner.invoke(app, ["eval", str(trained), "--data", str(data), "--metrics", "loss", "--output",
                               str(out)]).exit_code == 0
    assert "loss" in json.loads(out.read_text())["scores"]


def test_chat_options(trained):
    refused(["chat", str(trained), "--max-new-tokens", "0"], "max-new-tokens")
    refused(["chat", str(trained), "--message", "hi", "--message", "", "--message", "again"], "--message",
            "empty")


def test_a_resume_after_editing_the_run_config_names_the_key(tmp_path, tiny_model_dir):
    path = config_file(tmp_path, tiny_model_dir, train={"max_steps": 2, "save_every": 1})
    assert runner.invoke(app, ["train", str(path), "--quiet"]).exit_code == 0
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    status["status"] = "training"
    (tmp_path / "run" / "run.json").write_text(json.dumps(status))
    edited = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    edited["train"]["lr"] = 0.5
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(edited))
    refused(["train", str(tmp_path / "run" / "config.yaml"), "--resume"], "train.lr (0.001 -> 0.5)")

