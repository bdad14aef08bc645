"""`tuneforge compare`: every method trains in its own process and the report has every column filled."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tuneforge.cli import app
from tuneforge.config import dump_yaml, load_config
from tuneforge.reports.compare import COLUMNS


@pytest.mark.slow  # two training subprocesses and their measurements: ~45 s of the suite's budget
def test_compare_writes_a_complete_report(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 3}, eval={
        "metrics": ["loss", "exact_match"], "bench": {"data": "quickstart:mc", "shots": 1}, "compare_base": True})
    path = tmp_path / "compare.yaml"
    path.write_text(dump_yaml(load_config(config).run))
    out = tmp_path / "report"  # two methods: one that merges, one that cannot (the report's columns differ)
    result = CliRunner().invoke(app, ["compare", str(path), "--methods", "lora,prompt", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"lora", "prompt"}
    for name, row in rows.items():
        for column in COLUMNS:
            if column.key in ("accuracy", "f1", "text_latency_ms", "merged_text_latency_ms"):
                assert row[column.key] is None  # a classification task's columns
            elif column.key == "merged_latency_ms" and name == "prompt":
                assert row[column.key] is None  # prompt tuning cannot merge
            else:
                assert row[column.key] is not None, (name, column.key)
    assert rows["prompt"]["trainable"] < rows["lora"]["trainable"]
    assert report["winners"]["trainable"] == "prompt"
    for name in ("report.md", "report.html", "cost.png", "quality.png", "inference.png"):
        assert (out / name).stat().st_size > 0
    assert "| lora |" in (out / "report.md").read_text() and "benchmark accuracy" in (out / "report.md").read_text()
    assert "bench_acc" in rows["lora"]["before"]  # the base model's score, in the legend


def test_compare_rejects_an_unknown_method_before_training(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    path = tmp_path / "compare.yaml"
    path.write_text(dump_yaml(load_config(config).run))
    result = CliRunner().invoke(app, ["compare", str(path), "--methods", "lora,lorra", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "did you mean 'lora'" in result.output
    assert not (tmp_path / "o").exists()
