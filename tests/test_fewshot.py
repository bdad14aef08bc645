"""Few-shot curves: exact match by teacher forcing agrees with greedy decoding, and `strategy: fewshot` scores every
start, target, k and seed (in-context and zero-shot beside), resumes by skipping finished cells, and summarises
mean, worst and 95% intervals."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import lora_tiny
from tests.test_meta_strategy import meta_config
from tuneforge.api import train
from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.render import IGNORE_INDEX, Encoded
from tuneforge.evaluation.forced import forced_exact_match
from tuneforge.strategies.fewshot import summary

pytestmark = pytest.mark.numerical


@pytest.mark.parametrize("shared", [0, 70])
def test_forced_exact_match_is_greedy_decodings(tokenizer, shared):
    """The model's own greedy continuation of each prompt is an exact match; the same with one token changed (first,
    middle or last) is not. Prompts that share a long prefix (in-context shots) score the same from its cache."""
    from tuneforge.evaluation.forced import _shared_prefix

    model = lora_tiny(tokenizer, seed=3).eval()
    generator = torch.Generator().manual_seed(3)
    common = torch.randint(5, 500, (1, shared), generator=generator)
    examples, expected = [], []
    for index in range(6):
        prompt = torch.cat([common, torch.randint(5, 500, (1, 4 + index), generator=generator)], dim=1)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=None)
        ids = out[0].tolist()
        answer = ids[prompt.shape[1]:]
        if index % 2:  # change one answer token: greedy decoding would not write it
            where = [0, 2, 4][index // 2]
            answer[where] = (answer[where] + 1) % 500 + 5
        ids = ids[:prompt.shape[1]] + answer
        labels = [IGNORE_INDEX] * prompt.shape[1] + answer
        examples.append(TrainExample(index, Example("t", index, text="x"), Encoded(ids, labels, (len(ids) - 1,))))
        expected.append(index % 2 == 0)
    assert _shared_prefix(model, examples) == shared  # computed once, cached, when long enough
    assert forced_exact_match(model, examples, tokenizer.pad_token_id, batch_size=4) == expected


def test_summary_means_worst_and_intervals():
    rows = [{"start": "base", "task": t, "k": 4, "seed": s, "exact_match": v, "prompt_tokens": 10.0}
            for t, values in (("a", [10.0, 20.0, 30.0]), ("b", [50.0, 50.0, 50.0])) for s, v in enumerate(values)]
    rows.append({"start": "in-context", "task": "a", "k": 64, "seed": 0, "skipped": "too long"})
    table = {(r["start"], r["task"], r["k"]): r for r in summary(rows)}
    a = table["base", "a", 4]
    assert a["mean"] == 20.0 and a["worst"] == 10.0 and a["seeds"] == 3
    # t(0.975, 2) = 4.3027; sd 10; half-width 4.3027 * 10 / sqrt(3) = 24.84
    assert a["ci95"] == pytest.approx([20.0 - 24.842, 20.0 + 24.842], abs=1e-3)
    assert table["base", "b", 4]["ci95"] == [50.0, 50.0]
    mean = table["base", "mean", 4]  # per seed the mean over tasks: 30, 35, 40
    assert mean["mean"] == 35.0 and mean["worst"] == 30.0
    assert ("in-context", "a", 64) not in table


def test_fewshot_scores_every_cell_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    from tuneforge.strategies import fewshot

    meta = train(meta_config(tmp_path / "meta", tiny_model_dir), quiet=True).run_dir
    config = meta_config(tmp_path / "fewshot", tiny_model_dir)
    config["strategy"] = {"name": "fewshot", "starts": {"base": None, "fomaml": str(meta)}, "k": [0, 2], "seeds": 2,
                          "steps": 2, "max_test": 3}
    config["train"]["batch_size"] = 2
    config["data"] = {"max_seq_len": 256}  # room for two examples in context
    # interrupted at the 20th cell's score (Ctrl-C): the 19 before it are kept, and --resume scores only the rest
    calls, real, interrupt = [], fewshot._score, [True]

    def score(*args):
        calls.append(1)
        if len(calls) == 20 and interrupt and interrupt.pop():
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fewshot, "_score", score)
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet=True)
    calls.clear()
    result = train(config, quiet=True, resume=True)
    assert len(calls) == 3 * 5 * 3 - 19
    table = json.loads((result.run_dir / "eval.json").read_text())["fewshot"]
    targets = ["animal_or_vehicle", "from_json", "lower", "roman", "sort_words"]
    for start in ("base", "fomaml", "in-context"):
        assert sorted({r["task"] for r in table if r["start"] == start}) == sorted([*targets, "mean"])
        assert {(r["k"], r["seeds"]) for r in table if r["start"] == start} == {(0, 1), (2, 2)}
    in_context = {r["k"]: r["prompt_tokens"] for r in table if r["start"] == "in-context" and r["task"] == "mean"}
    trained = {r["k"]: r["prompt_tokens"] for r in table if r["start"] == "base" and r["task"] == "mean"}
    assert in_context[0] == trained[0] == trained[2] < in_context[2]  # the shown examples cost prompt tokens
    assert len(list((result.run_dir / "cells").glob("*/*/*/result.json"))) == 3 * 5 * 3
    assert not list((result.run_dir / "cells").rglob("*.safetensors"))  # a cell's score is all it keeps
    assert not [p for p in json.loads((result.run_dir / "run.json").read_text())["weights_sha256"] if "cells" in p]
    report = (result.run_dir / "fewshot.md").read_text()
    assert "## Averaged over the targets" in report and "| fomaml |" in report and "k=2" in report
    assert (result.run_dir / "fewshot.png").stat().st_size > 10_000 and (result.run_dir / "fewshot.html").is_file()


def test_refused_before_anything_loads(tmp_path, tiny_model_dir, monkeypatch):
    from tuneforge.engine import session
    from tuneforge.errors import ConfigError, TuneforgeError

    monkeypatch.setattr(session, "open_session", lambda *a, **k: pytest.fail("a model was loaded"))
    config = meta_config(tmp_path, tiny_model_dir)
    config["strategy"] = {"name": "fewshot", "k": [0, 300], "seeds": 2}
    with pytest.raises(ConfigError, match=r"strategy\.k.*cannot give 2 draws of k=300.*256 training records"):
        train(config, quiet=True)
    config["strategy"] = {"name": "fewshot", "k": [4], "starts": {"reptile": str(tmp_path / "missing")}}
    with pytest.raises(TuneforgeError, match="missing"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


def test_in_context_prompts_say_the_instruction_once_then_the_shots(tokenizer):
    """An in-context prompt: the task's instruction once (its system turn), the k shots as earlier user/assistant
    turns, then the question; only the question's answer is trained (scored), the shots' answers are prompt."""
    from tuneforge.data.family import read_family
    from tuneforge.data.render import encode_example
    from tuneforge.strategies.fewshot import _in_context

    task = read_family("textops").tasks["roman"]
    shots, question = task.support(4, seed=1), task.tests()[0]
    prompt = _in_context(task, 4, 1, max_test=3)[0]
    assert [m["role"] for m in prompt.messages] == ["system", *["user", "assistant"] * 5]
    assert prompt.messages[0]["content"] == "Write the number as a Roman numeral."
    assert [m["content"] for m in prompt.messages[1:9:2]] == [s.messages[1]["content"] for s in shots]
    assert prompt.messages[-2:] == question.messages[1:] and prompt.prompt_turns == 9
    encoded = encode_example(prompt, tokenizer, chat=True)
    answer = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer).startswith(question.messages[-1]["content"])
