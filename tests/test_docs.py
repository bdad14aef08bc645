"""The documentation: the site builds without a warning (links resolve, every page in nav), the config reference is
the schema's, the command-line reference names every command and option, and every Python example in the docs and
the README runs as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_the_site_builds_strictly(tmp_path):
    command = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    result = subprocess.run([command, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "reference" / "python-api" / "index.html").is_file()


def test_the_config_reference_is_the_schemas():
    from tuneforge.api import config_reference

    assert (ROOT / "docs" / "reference" / "config.md").read_text() == config_reference(), "run `make docs`"


def test_the_command_line_reference_names_every_command_and_option():
    import typer.main

    from tuneforge.cli import app

    reference = (ROOT / "docs" / "reference" / "cli.md").read_text()

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, command in walk(typer.main.get_command(app), ["tuneforge"]):
        assert len(path) == 1 or f"`{' '.join(path)}`" in reference, f"{' '.join(path)}: run `make docs`"
        for option in (o for param in command.params for o in param.opts if o.startswith("--")):
            assert f"`{option}" in reference, f"{' '.join(path)} {option}: run `make docs`"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def default_is_tiny(tmp_path, monkeypatch, tokenizer):
    """A fresh home whose default model is a tiny one of the default model's family (same tokenizer)."""
    from tuneforge.models import default
    from tuneforge.models.tiny import save_tiny_llama

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    save_tiny_llama(default.cached_dir(), tokenizer)
    (default.cached_dir() / default.COMPLETE_MARKER).write_text("a tiny stand-in for the docs' examples\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(work)
    return work


def test_every_documented_python_example_runs(default_is_tiny, capsys):
    blocks = python_blocks(ROOT / "docs" / "reference" / "python-api.md")
    assert len(blocks) >= 9  # one for every API function family the page documents
    namespace: dict = {}
    for block in [*python_blocks(ROOT / "README.md"), *blocks]:
        exec(compile(block, "docs example", "exec"), namespace)
    shown = capsys.readouterr().out
    assert "runs/api" in shown and "bench_acc" not in shown  # printed values, not names
    assert (default_is_tiny / "exports" / "api-gguf" / "model-q8_0.gguf").is_file()
    assert (default_is_tiny / "feedback" / "preferences.jsonl").read_text().count("\n") == 1
