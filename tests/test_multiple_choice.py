"""Multiple-choice benchmarks: prompts and token splits as lm-eval builds them, log-likelihoods equal to a plain
forward pass, the same scores as lm-evaluation-harness itself on the bundled set, and the benchmark before and
after training in eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.errors import DataError
from tuneforge.evaluation.harness import bench_by_lm_eval
from tuneforge.evaluation.multiple_choice import (
    Question,
    continuation_ids,
    loglikelihoods,
    question_text,
    read_questions,
    requests,
    score_questions,
)
from tuneforge.models.tiny import build_tiny_llama

QUESTIONS = [Question("2 + 2?", ("3", "4"), 1, "math", "dev"), Question("1 + 1?", ("2", "5"), 0, "math", "dev"),
             Question("3 + 3?", ("6", "7", "8"), 0, "math"), Question("Capital of Peru?", ("Lima", "Oslo"), 0)]


def test_prompts_are_lm_evals_mmlu_and_cloze_layouts():
    (letters_q, prompt, choices), (_, plain, _) = requests(QUESTIONS, shots=1, style="letters")
    assert prompt == ("The following are multiple choice questions (with answers) about math.\n\n"
                      "2 + 2?\nA. 3\nB. 4\nAnswer: B\n\n3 + 3?\nA. 6\nB. 7\nC. 8\nAnswer:")
    assert choices == ["A", "B", "C"] and letters_q.question == "3 + 3?"
    # no subject: the shots come from any subject's dev records
    assert plain == "2 + 2?\nA. 3\nB. 4\nAnswer: B\n\nCapital of Peru?\nA. Lima\nB. Oslo\nAnswer:"
    (_, cloze, options), _ = requests(QUESTIONS, shots=2, style="choices")
    assert cloze.endswith("Question: 1 + 1?\nAnswer: 2\n\nQuestion: 3 + 3?\nAnswer:") and options == ["6", "7", "8"]


def test_continuation_tokens_are_split_as_lm_eval_splits_them(tokenizer):
    context, continuation = continuation_ids(tokenizer, "Answer: ", "Paris")  # the trailing space moves over
    assert tokenizer.decode(context) == "Answer:" and tokenizer.decode(continuation) == " Paris"
    whole = tokenizer("Answer: Paris", add_special_tokens=False)["input_ids"]
    assert context + continuation == whole


def test_loglikelihoods_equal_a_plain_forward_pass(tokenizer):
    model = build_tiny_llama(tokenizer, seed=5).eval()
    pairs = [([5, 6, 7, 8, 9], [10, 11]), ([5, 6, 7, 8, 9], [12]), ([20, 21], [22, 23, 24]), ([30], [31]),
             ([5, 6, 7, 8, 9], [10, 11])]  # the first and last share an input: computed once
    got = loglikelihoods(model, pairs, pad_id=tokenizer.pad_token_id, batch_size=2)
    for (context, continuation), value in zip(pairs, got, strict=True):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        expected = sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))
        assert value == pytest.approx(expected, abs=1e-4)


def test_the_three_scores_pick_by_sum_characters_and_tokens(tokenizer, monkeypatch):
    import tuneforge.evaluation.multiple_choice as mc

    question = [Question("q", ("ab", "abcdefgh"), 1)]
    # choice 0: -4 over 2 characters (1 token); choice 1: -6 over 8 characters (3 tokens, say)
    monkeypatch.setattr(mc, "loglikelihoods", lambda model, pairs, **_: [-4.0, -6.0])
    monkeypatch.setattr(mc, "continuation_ids", lambda tok, context, cont: ([1], [2] if cont == " ab" else [2, 3, 4]))
    scores, samples = score_questions(torch.nn.Linear(1, 1), tokenizer, question, shots=0, style="choices")
    assert scores == {"acc": 0.0, "acc_norm": 100.0, "acc_per_token": 100.0}  # -4 > -6; -4/2 < -6/8; -4/1 < -6/3
    assert samples[0]["chosen"] == 0 and samples[0]["loglikelihoods"] == [-4.0, -6.0]


@pytest.mark.parametrize(("record", "message"), [
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "field 'answer': 2 does not name one of the 2"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "'C' does not name one"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "field 'choices': must be a list of 2 to 26"),
    ({"question": "q", "choices": ["a", ""], "answer": 0}, "field 'choices'"),
    ({"prompt": "q"}, "needs 'question'"),
    ({"question": "  ", "choices": ["a", "b"], "answer": 0}, "field 'question': is empty"),  # issue 30, finding 11
    ({"question": "q", "choices": ["Paris", "Rome", "Paris "], "answer": 0}, "'Paris' is listed twice"),
])
def test_bad_records_are_refused_at_their_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "ok", "choices": ["a", "b"], "answer": "b"}, record])
    with pytest.raises(DataError, match=f"mc.jsonl:2: .*{message}"):
        read_questions(str(path))
    assert read_questions(str(write_jsonl(tmp_path / "ok.jsonl", [{"question": "ok", "choices": ["a", "b"],
                                                                    "answer": "b"}])))[0].answer == 1


def test_bytes_that_are_not_utf8_are_named_as_such(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_bytes(b'{"question": "ok", "choices": ["a", "b"], "answer": 0}\n{"question": "caf\xe9", "choices": '
                     b'["a", "b"], "answer": 0}\n')
    with pytest.raises(DataError, match=r"mc.jsonl:2: .*UTF-8"):
        read_questions(str(path))


def test_a_prompt_longer_than_the_context_loses_its_start_as_lm_eval_cuts_it_and_says_so(tokenizer):
    model = build_tiny_llama(tokenizer, seed=5).eval()
    model.config.max_position_embeddings = 24
    long = Question("why " * 40 + "?", ("yes", "no"), 0)
    scores, samples = score_questions(model, tokenizer, [long, Question("ok?", ("yes", "no"), 1)], shots=0,
                                      style="choices")
    assert scores["truncated"] == 1
    context, continuation = continuation_ids(tokenizer, question_text(long, "choices"), " yes")
    kept = (context + continuation)[-25:]  # lm-eval: the last max_length + 1 tokens, the final one predicted only
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([kept[:-1]])).logits[0].float(), -1)
    expected = sum(logprobs[len(kept) - 1 - len(continuation) + i, t].item() for i, t in enumerate(continuation))
    assert samples[0]["loglikelihoods"][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.heavy
def test_scores_agree_with_lm_evaluation_harness_on_the_bundled_set(tokenizer):
    model = build_tiny_llama(tokenizer, seed=11).eval()
    # two of the four subjects (lm-eval's time is mostly per task): dates have 4 choices of 3 to 10 tokens, the
    # capitals one-word ones
    questions = [q for q in read_questions("quickstart:mc") if q.subject in ("dates", "geography")]
    for style, shots in (("letters", 2), ("choices", 1)):
        ours, _ = score_questions(model, tokenizer, questions, shots=shots, style=style, batch_size=32)
        theirs, per_subject = bench_by_lm_eval(model, tokenizer, questions, shots=shots, style=style, batch_size=32)
        assert sum(s["n"] for s in per_subject.values()) == sum(q.split != "dev" for q in questions) == 55
        assert ours["acc"] == pytest.approx(theirs["acc"]), style
        assert ours["acc_norm"] == pytest.approx(theirs["acc_norm"]), style
        for subject in ("dates", "geography"):
            assert ours["subjects"][subject] == pytest.approx(per_subject[f"tuneforge_mc_{subject}"]["acc"]), style


@pytest.mark.numerical  # trains in the test precision: `make test-bf16` runs it again in bf16
def test_benchmark_before_and_after_training_in_eval_json_and_the_eval_command(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, eval={"metrics": ["loss"], "compare_base": True,
                                                         "bench": {"data": "quickstart:mc", "shots": 1}})
    run_dir = train(config, quiet=True).run_dir
    evaluation = json.loads((run_dir / "eval.json").read_text())
    for when in ("before", "after"):
        assert set(evaluation[when]) >= {"bench_acc", "bench_acc_norm", "bench_acc_per_token"}
        assert 0 <= evaluation[when]["bench_acc"] <= 100
        assert set(evaluation[when]["bench_subjects"]) == {"dates", "geography", "arithmetic", "vocabulary"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval_before" and "bench_acc" in r for r in rows)
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--bench", "quickstart:mc", "--shots", "1",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["scores"]["bench_acc"] == pytest.approx(evaluation["after"]["bench_acc"])
    assert "bench_subjects/dates" in result.output  # each subject's accuracy printed
    # lm-eval itself on the run, through the command line, with task YAMLs from a directory (how offline data is
    # given): the bundled set's capitals as an lm-eval task score what tuneforge's harness scores for them
    from tuneforge.evaluation.harness import write_bench_tasks

    geography = [q for q in read_questions("quickstart:mc") if q.subject == "geography"]
    (tmp_path / "tasks").mkdir()
    [task] = write_bench_tasks(geography, "letters", tmp_path / "tasks")
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--lm-eval", task, "--lm-eval-include",
                                      str(tmp_path / "tasks"), "--shots", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    from tuneforge.runs.trained import load_trained

    trained = load_trained(run_dir)
    ours, _ = score_questions(trained.model, trained.tokenizer, geography, shots=1, autocast=trained.autocast)
    scores = json.loads(out.read_text())["scores"]["lm_eval"][task]
    assert scores["n"] == 15 and scores["acc"] == pytest.approx(ours["acc"])
    result = CliRunner().invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 2 and "give --data FILE, --bench FILE or --lm-eval TASKS" in result.output
    bad = dict(config, eval={"bench": {"data": "quickstart:mc", "style": "cloze"}})
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, bad))])
    assert result.exit_code == 2 and "eval.bench.style" in result.output, result.output


def write_config(tmp_path, config):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_task(directory, name: str, extra: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                            f"    test: {directory / 'data.jsonl'}\ntest_split: test\n"
                                            "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_target: 0\n"
                                            f"doc_to_choice: ['a', 'b']\n{extra}")


@pytest.mark.parametrize("how", ["function", "class", "included"])
def test_task_code_beside_an_include_yaml_runs_only_when_the_user_says_so(tmp_path, how):
    """Issue 30, finding 5: lm-eval imports the Python a task YAML names (`!function utils.f`, `class: !function`),
    so a downloaded task folder could run anything. Refused unless allowed, and nothing is imported to find out."""
    from tuneforge.errors import ConfigError
    from tuneforge.evaluation.harness import requested_tasks

    tasks = tmp_path / "tasks"
    marker = tmp_path / "ran"
    (tmp_path / "elsewhere").mkdir()
    for folder in (tasks, tmp_path / "elsewhere"):
        folder.mkdir(exist_ok=True)
        (folder / "utils.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef f(docs):\n    return docs\n")
    if how == "function":
        write_task(tasks, "mine", "process_docs: !function utils.f\n")
    elif how == "class":
        (tasks / "mine.yaml").write_text("task: mine\nclass: !function utils.f\n")
    else:  # the code is in a YAML outside the folder that one of its YAMLs includes
        (tmp_path / "elsewhere" / "base.yaml").write_text("process_docs: !function utils.f\n")
        write_task(tasks, "mine", "include: ../elsewhere/base.yaml\n")
    with pytest.raises(ConfigError, match=r"(?s)runs Python.*--lm-eval-allow-code"):
        requested_tasks("mine", tasks)
    assert requested_tasks("mine,", tasks, allow_code=True) == ["mine"]
    assert not marker.exists()


def test_an_include_task_never_takes_a_built_in_tasks_name(tmp_path):
    """Issue 30, finding 5: a YAML named arc_easy replaced lm-eval's own task, and its scores were reported as
    arc_easy's."""
    from tuneforge.errors import ConfigError
    from tuneforge.evaluation.harness import lm_eval_scores

    write_task(tmp_path / "tasks", "arc_easy")
    with pytest.raises(ConfigError, match=r"(?s)arc_easy\.yaml defines task 'arc_easy'.*my_arc_easy"):
        lm_eval_scores(None, None, ["arc_easy"], include_path=tmp_path / "tasks")


def test_task_data_lm_eval_cannot_read_is_a_located_error(tmp_path, tokenizer):
    """Issue 30, finding 10: a missing data file (or the hub out of reach offline) was a traceback."""
    from tuneforge.errors import ConfigError
    from tuneforge.evaluation.harness import lm_eval_scores

    write_task(tmp_path / "tasks", "mine")  # its data file, tasks/data.jsonl, is never written
    with pytest.raises(ConfigError, match=r"(?s)--lm-eval mine: lm-eval could not read a task's data.*data.jsonl.*"
                                          r"fix: .*HF_DATASETS_OFFLINE"):
        lm_eval_scores(build_tiny_llama(tokenizer), tokenizer, ["mine"], include_path=tmp_path / "tasks",
                       builtin_tasks=False)


REAL = Path(__file__).parent / "data" / "real"


def test_published_benchmark_layouts_read_as_published():
    """Issue 31: MMLU's own CSVs (no header) were refused with "write it in the MMLU layout", which they are; ARC's
    hub rows (choices {text, label}, answerKey) and HellaSwag's (ctx, endings, label) had no path."""
    mmlu = read_questions(str(REAL / "mmlu" / "abstract_algebra_test.csv"))
    assert [(q.question[:21], q.choices, q.answer, q.subject, q.split) for q in mmlu] == [
        ("Find all c in Z_3 suc", ("0", "1", "2", "3"), 1, "abstract_algebra", "test"),
        ("Statement 1 | If aH i", ("True, True", "False, False", "True, False", "False, True"), 1,
         "abstract_algebra", "test")]
    with pytest.raises(DataError, match="every record is a few-shot 'dev' one"):  # the dev file alone
        read_questions(str(REAL / "mmlu" / "abstract_algebra_dev.csv"))
    arc = read_questions(str(REAL / "arc_challenge.jsonl"))
    assert [(q.choices[q.answer], len(q.choices)) for q in arc] == [("dry palms", 4),
                                                                    ("186 pounds and 84 kilograms", 4)]
    hellaswag = read_questions(str(REAL / "hellaswag.jsonl"))
    assert hellaswag[0].question == "Roof shingle removal: A man is sitting on a roof. He"  # as lm-eval asks it
    assert hellaswag[0].choices[hellaswag[0].answer] == "starts pulling up roofing on a roof."
    assert hellaswag[1].choices[3] == ", the man continues removing the snow on his car."


def test_data_bench_shows_each_question_as_asked_with_its_answer(tmp_path):
    """Issue 31: benchmark files had no check-only command."""
    from typer.testing import CliRunner

    from tuneforge.cli import app

    shown = CliRunner().invoke(app, ["data", "bench", str(REAL / "hellaswag.jsonl"), "--style", "choices",
                                     "--shots", "0", "--samples", "1"])
    assert shown.exit_code == 0, shown.output
    assert "2 questions, 0 few-shot (dev) records" in shown.output
    assert "Roof shingle removal: A man is sitting on a roof. He" in shown.output
    assert "right answer: D (starts pulling up roofing on a roof.)" in shown.output
    bad = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "a"], "answer": 0}])
    refused = CliRunner().invoke(app, ["data", "bench", str(bad)])
    assert refused.exit_code == 2 and "mc.jsonl:1" in refused.output and "listed twice" in refused.output


def test_another_layout_is_read_through_columns(tmp_path):
    """Issue 31: a `columns:` mapping for any other multiple-choice layout (eval.bench.columns, bench_check)."""
    from tuneforge.api import bench_check

    path = write_jsonl(tmp_path / "quiz.jsonl", [{"stem": "2 + 2?", "options": ["3", "4"], "gold": "B",
                                                  "topic": "sums"}])
    columns = {"question": "stem", "choices": "options", "answer": "gold", "subject": "topic"}
    [question] = read_questions(str(path), columns)
    assert (question.question, question.choices, question.answer, question.subject) == ("2 + 2?", ("3", "4"), 1,
                                                                                          "sums")
    assert "right answer: B (4)" in "\n".join(bench_check(path, shots=0, columns=columns))
    with pytest.raises(DataError, match=r"quiz.jsonl:1: field 'prompt': no such column"):
        read_questions(str(path), {"question": "prompt"})
