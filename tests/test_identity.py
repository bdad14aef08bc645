"""A run's identity and integrity (issue 29): one digest covers every weight that produces a run's outputs (the base
model's files and the run's own); every command that makes a run records it; caches derived from a run are keyed
by it; a damaged weight file or cached file is refused or computed again, never trusted, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import qa_records, tiny_config, write_jsonl
from tuneforge.api import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two finished tiny LoRA runs on a base model of their own (a copy the tests may change)."""
    root = tmp_path_factory.mktemp("identity")
    base = shutil.copytree(tiny_model_dir, root / "base")
    made = {}
    for name, seed in (("a", 1), ("b", 2)):
        made[name] = train(tiny_config(root, base, train={"max_steps": 2, "seed": seed},
                                       output={"dir": str(root / name)}), quiet=True).run_dir
    return root, base, made


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_a_run_records_one_digest_of_its_base_and_its_own_weights(runs):
    from tuneforge.config import ModelConfig
    from tuneforge.models.digest import model_digest
    from tuneforge.runs.identity import run_identity

    _, base, made = runs
    a, b = record(made["a"]), record(made["b"])
    assert a["base_sha256"] == b["base_sha256"] == model_digest(ModelConfig(path=str(base)))
    assert set(a["weights_sha256"]) == {"adapter/adapter_model.safetensors"}
    assert a["identity_sha256"] != b["identity_sha256"]
    assert run_identity(made["a"], ModelConfig(path=str(base))) == a["identity_sha256"]


def test_two_merged_runs_of_different_weights_never_share_a_cache_entry(runs, tokenizer):
    from tuneforge.engine.teacher import cache_path
    from tuneforge.runs.merge import merge_runs
    from tuneforge.runs.trained import RunTeacher

    root, _, made = runs
    merged = [merge_runs([made["a"], made["b"]], root / f"merged-{i}", how="linear", weights=weights)
              for i, weights in enumerate(([0.5, 0.5], [0.2, 0.8]))]
    first, second = record(merged[0]), record(merged[1])
    assert first["identity_sha256"] != second["identity_sha256"] and first["base_sha256"] == second["base_sha256"]
    examples = _encoded(root, tokenizer)
    keys = {cache_path(RunTeacher(str(m), tokenizer, tokenizer).identity(), 4, 1.0, "fp32", examples) for m in merged}
    assert len(keys) == 2


def _encoded(root: Path, tokenizer) -> list:
    from tuneforge.config import DataConfig, DatasetSpec
    from tuneforge.data.dataset import encode_examples, load_examples

    path = write_jsonl(root / "cache-data.jsonl", qa_records(8))
    return encode_examples(load_examples([DatasetSpec(path=str(path))], seed=0), tokenizer,
                           DataConfig(train=[str(path)], max_seq_len=64, cache=False))[0]


def test_a_teacher_whose_base_weights_changed_on_disk_is_computed_again(tmp_path, tiny_model_dir, tokenizer):
    from tuneforge.models.tiny import save_tiny_llama

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    teacher = train(tiny_config(tmp_path, base, train={"max_steps": 1}, output={"dir": str(tmp_path / "t")}),
                    quiet=True).run_dir
    caches = Path(__import__("os").environ["TUNEFORGE_HOME"]) / "cache" / "teacher"

    def distil(name: str) -> set[Path]:
        before = set(caches.glob("*"))
        config = tiny_config(tmp_path, base, objective={"name": "kd", "teacher": str(teacher), "top_k": 4},
                             train={"max_steps": 1}, output={"dir": str(tmp_path / name)})
        train(config, quiet=True)
        return set(caches.glob("*")) - before

    assert len(distil("first")) == 1  # written once (read again while the teacher stays: tests/test_distill.py)
    save_tiny_llama(base, tokenizer, seed=5)  # the teacher run's base model replaced on disk, same names
    assert len(distil("changed")) == 1  # not the old teacher's outputs: computed again


def test_a_damaged_adapter_is_refused_by_name_everywhere_it_is_loaded(runs, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.errors import RunDirError
    from tuneforge.runs.trained import load_trained

    root, _, made = runs
    damaged = shutil.copytree(made["a"], tmp_path / "damaged")
    adapter = damaged / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])  # cut short
    with pytest.raises(RunDirError, match=r"adapter_model.safetensors does not match the sha256"):
        load_trained(damaged)
    for args in (["eval", str(damaged), "--data", str(root / "test.jsonl")],
                 ["export", str(damaged), "--out", str(tmp_path / "out"), "--merge"],
                 ["merge", str(damaged), str(made["b"]), "--out", str(tmp_path / "merged")],
                 ["chat", str(damaged), "--message", "hi"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "does not match the sha256" in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "merged").exists()


class _Teacher:
    """A teacher source whose model is a tiny random one, named by `tag` (each test's caches its own)."""

    def __init__(self, tokenizer, tag):
        from tuneforge.models.tiny import build_tiny_llama

        self.path, self.tokenizer, self.student_tokenizer, self.tag = "tiny", tokenizer, tokenizer, str(tag)
        self._model = build_tiny_llama(tokenizer, seed=3)

    def model(self, chosen, device):
        return self._model.eval()

    def identity(self) -> dict:
        return {"tiny": self.tag}


@pytest.mark.parametrize("damage", ["edited", "cut short", "nan"])
def test_a_damaged_top_k_cache_is_detected_and_computed_again(tmp_path, tokenizer, damage):
    from tuneforge.engine.teacher import CachedTeacher, DamagedCache, cache_path, load_teacher
    from tuneforge.objectives.params import KdParams

    examples = _encoded(tmp_path, tokenizer)
    params = KdParams(teacher="tiny", top_k=4, cache=True)
    source = _Teacher(tokenizer, tmp_path)
    first = load_teacher(source, params, "fp32", torch.device("cpu"), examples, 4)
    path = cache_path(source.identity(), 4, params.temperature, "fp32", examples)
    assert isinstance(first, CachedTeacher) and first.path == path and "computed again" not in first.describe()
    written = path.read_bytes()
    if damage == "cut short":
        path.write_bytes(written[: len(written) // 2])
    else:  # plausible values (or NaN) written over the cached ones, the file's own metadata kept
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        tensors["logprobs"][0, 0] = float("nan") if damage == "nan" else tensors["logprobs"][0, 0] - 3.0
        save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(DamagedCache):
        CachedTeacher(path)
    again = load_teacher(source, params, "fp32", torch.device("cpu"), examples, 4)
    assert "computed again: the cached file was" in again.describe()
    assert path.read_bytes() == written  # the same outputs written again


@pytest.mark.parametrize("damage", ["edited", "cut short", "fewer"])
def test_a_damaged_seqkd_cache_is_detected_and_computed_again(tmp_path, tokenizer, tiny_model_dir, damage):
    from tuneforge.config import DatasetSpec, load_config
    from tuneforge.data.dataset import load_examples
    from tuneforge.engine.teacher import teacher_answers
    from tuneforge.objectives.params import SeqkdParams

    path = write_jsonl(tmp_path / "prompts.jsonl", qa_records(4))
    records = load_examples([DatasetSpec(path=str(path))], seed=0)
    cfg = load_config(tiny_config(tmp_path, tiny_model_dir)).run
    params = SeqkdParams(teacher="tiny", max_new_tokens=3)
    said: list[str] = []
    console = type("Console", (), {"info": lambda self, line: said.append(line)})()
    first = teacher_answers(_Teacher(tokenizer, tmp_path), cfg, params, records, console)
    cache = Path(said[-1].split("written once to ")[1].split(";")[0])
    saved = json.loads(cache.read_text())
    if damage == "edited":
        saved["answers"][0] = "an answer the teacher never gave"
        cache.write_text(json.dumps(saved))
    elif damage == "fewer":
        saved["answers"] = saved["answers"][:2]
        cache.write_text(json.dumps(saved))
    else:
        cache.write_text(cache.read_text()[:20])
    again = teacher_answers(_Teacher(tokenizer, tmp_path), cfg, params, records, console)
    assert "computed again: the cached file was" in said[-1]
    assert [e.messages for e in again] == [e.messages for e in first]
    assert teacher_answers(_Teacher(tokenizer, tmp_path), cfg, params, records, console) and "read from" in said[-1]
