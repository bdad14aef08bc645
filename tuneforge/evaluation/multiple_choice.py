"""Multiple-choice benchmarks scored the way lm-evaluation-harness scores them: each choice's log-likelihood as a
continuation of the (few-shot) prompt, the highest wins.

A benchmark file holds MMLU-layout records, `{"question", "choices": [...], "answer": index or letter,
"subject"?, "split"?}`; records with `"split": "dev"` are the few-shot examples (the first `shots` of the
question's subject, else of the file), the rest are scored. Two prompt styles, as lm-eval's tasks use:
- `letters` (MMLU): the choices listed under the question as `A. ...`, the continuation scored being ` A`, ` B`, ...
- `choices` (ARC, HellaSwag): the continuation is each choice's own text.
Scores: `acc` (highest log-likelihood), `acc_norm` (divided by the choice's length in characters, lm-eval's
acc_norm) and `acc_per_token` (the mean log-likelihood of its tokens), in percent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tuneforge.data.sources import Malformed, RawRecord, read_records, resolve_source
from tuneforge.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FEWSHOT_DELIMITER, TARGET_DELIMITER = "\n\n", " "


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    split: str = "test"


def read_questions(path: str, columns: dict[str, str] | None = None) -> list[Question]:
    """Every record of a benchmark file, checked: a bad one is refused with its file and line. Published layouts
    read as they are: tuneforge's and MMLU's hub rows (question, choices, answer, subject?, split?), MMLU's own CSVs
    (no header: question, the choices, the answer's letter; the subject and split from the file name), ARC's rows
    (choices {text, label}, answerKey) and HellaSwag's (ctx, endings, label; cleaned as lm-eval cleans them);
    `columns` names another layout's fields ({question: stem, choices: options, answer: gold})."""
    from tuneforge.data.dataset import mapped_columns

    questions = []
    for record in _records(path):
        row = _published(mapped_columns(record, columns or {}).data)

        def refuse(field: str | None, problem: str, fix: str, record=record):
            raise DataError(record.path, record.where, field, problem, fix)

        if isinstance(row, Malformed):  # bytes that are not UTF-8, a line that is not JSON
            refuse(None, row.problem, row.fix)
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            refuse(None, "a multiple-choice record needs 'question' (text), 'choices' (a list of texts) and "
                   "'answer' (an index or a letter)", "write it in the MMLU layout")
        choices = row.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or \
                not all(isinstance(c, str) and c.strip() for c in choices):
            refuse("choices", f"must be a list of 2 to {len(LETTERS)} non-empty texts", "list the answers to "
                   "choose from")
        if not row["question"].strip():
            refuse("question", "is empty", "write the question's text")
        stripped = [c.strip() for c in choices]
        repeated = next((c for i, c in enumerate(stripped) if c in stripped[:i]), None)
        if repeated is not None:
            refuse("choices", f"{repeated!r} is listed twice, so which of them is right is ambiguous", "make every "
                   "choice distinct")
        answer = row.get("answer")
        if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
            answer = LETTERS.index(answer.strip().upper())
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            refuse("answer", f"{row.get('answer')!r} does not name one of the {len(choices)} choices",
                   f"give its index (0 to {len(choices) - 1}) or letter (A to {LETTERS[len(choices) - 1]})")
        questions.append(Question(row["question"].strip(), tuple(c.strip() for c in choices), answer,
                                  str(row.get("subject") or ""), str(row.get("split") or "test")))
    if not any(q.split != "dev" for q in questions):
        raise DataError(path, None, None, "no questions to score (every record is a few-shot 'dev' one)",
                        "add questions without \"split\": \"dev\"")
    return questions


def _records(path: str):
    """The file's records; MMLU's own CSVs have no header row, so their rows are named here."""
    import csv
    import gzip
    import io

    source = resolve_source(path)
    if not source.name.removesuffix(".gz").endswith(".csv"):
        return read_records(path)
    raw = source.read_bytes()
    text = (gzip.decompress(raw) if source.name.endswith(".gz") else raw).decode("utf-8-sig", errors="replace")
    first = next(csv.reader(io.StringIO(text, newline="")), [])
    answer = first[-1].strip().upper() if first else ""
    if "question" in first or len(first) < 4 or len(answer) != 1 or answer not in LETTERS:
        return read_records(path)
    stem = source.name.removesuffix(".gz").removesuffix(".csv")
    split = next((s for s in ("dev", "val", "test") if stem.endswith(f"_{s}")), "test")
    subject = stem.removesuffix(f"_{split}")
    reader = csv.reader(io.StringIO(text, newline=""))
    return (RawRecord(path, reader.line_num, {"question": row[0], "choices": row[1:-1], "answer": row[-1],
                                              "subject": subject, "split": "dev" if split == "dev" else "test"})
            for row in reader if row)


def _published(row):
    """ARC's and HellaSwag's rows as MMLU's (other rows as they are)."""
    if not isinstance(row, dict):
        return row
    choices = row.get("choices")
    if isinstance(choices, dict) and "text" in choices and "answerKey" in row:  # ARC
        labels = [str(label) for label in choices.get("label") or []]
        key = str(row["answerKey"])
        return {**row, "choices": choices["text"], "answer": labels.index(key) if key in labels else key}
    if "endings" in row and "ctx" in row:  # HellaSwag, with lm-eval's preprocessing
        query = f"{row.get('activity_label', '')}: {row.get('ctx_a', '')} {str(row.get('ctx_b', '')).capitalize()}" \
            if "ctx_a" in row else row["ctx"]
        label = row.get("label")
        return {"question": _hellaswag_text(query), "answer": int(label) if str(label).strip().isdigit() else label,
                "choices": [_hellaswag_text(e) if isinstance(e, str) else e for e in row["endings"]]
                if isinstance(row["endings"], list) else row["endings"]}
    return row


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def describe(subject: str) -> str:
    """MMLU's task description (lm-eval's `description`)."""
    subject = subject.replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""


def question_text(question: Question, style: str) -> str:
    """lm-eval's `doc_to_text`."""
    if style == "letters":
        listed = "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices))
        return f"{question.question}{listed}\nAnswer:"
    return f"Question: {question.question}\nAnswer:"


def choice_texts(question: Question, style: str) -> list[str]:
    """lm-eval's `doc_to_choice`: what follows the prompt for each choice."""
    return list(LETTERS[: len(question.choices)]) if style == "letters" else list(question.choices)


def requests(questions: Sequence[Question], shots: int, style: str) -> list[tuple[Question, str, list[str]]]:
    """Each scored question with its full prompt (description, shots, question) and its choices' texts."""
    dev = [q for q in questions if q.split == "dev"]
    out = []
    for question in questions:
        if question.split == "dev":
            continue
        pool = [q for q in dev if q.subject == question.subject] or dev
        examples = [question_text(q, style) + TARGET_DELIMITER + choice_texts(q, style)[q.answer]
                    for q in pool[:shots]]
        prompt = describe(question.subject) + "".join(e + FEWSHOT_DELIMITER for e in examples)
        out.append((question, prompt + question_text(question, style), choice_texts(question, style)))
    return out


def continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The context's tokens and the continuation's, split as lm-eval splits them: the whole text encoded once,
    so a token spanning the boundary goes to the continuation; the context's trailing spaces move over."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[: len(head)], whole[len(head):]


@torch.no_grad()
def loglikelihoods(model, pairs: Sequence[tuple[list[int], list[int]]], *, pad_id: int, batch_size: int,
                   autocast: Callable = nullcontext) -> list[float]:
    """Each continuation's summed log-probability after its context. A model input shared by several pairs runs
    once (one-token choices after one prompt: MMLU's letters). Batches of similar length, left-padded so that
    every continuation ends its row: the output layer runs on the last positions only (its 49k-wide log-softmax
    over every position cost more than the model)."""
    rows: dict[tuple[int, ...], list[int]] = {}  # model input -> the pairs it scores
    for index, (context, continuation) in enumerate(pairs):
        rows.setdefault(tuple(context + continuation)[:-1], []).append(index)
    inputs = sorted(rows, key=len)
    device = next(model.parameters()).device
    out = [0.0] * len(pairs)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start: start + batch_size]
        width = max(len(r) for r in chunk)
        keep = max(len(pairs[i][1]) for r in chunk for i in rows[r])
        ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with autocast():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, key in enumerate(chunk):
            for index in rows[key]:
                targets = torch.tensor(pairs[index][1], device=device)
                out[index] = logprobs[row, keep - len(targets):].gather(-1, targets[:, None]).sum().item()
    return out


def score_questions(model, tokenizer, questions: Sequence[Question], *, shots: int = 5, style: str = "letters",
                    batch_size: int = 16, autocast: Callable = nullcontext) -> tuple[dict, list[dict]]:
    """acc, acc_norm and acc_per_token (percent) over the scored questions, with several subjects each one's acc
    (`subjects`), and each question's choice."""
    asked = requests(questions, shots, style)
    pairs = [continuation_ids(tokenizer, prompt, TARGET_DELIMITER + choice)
             for _, prompt, choices in asked for choice in choices]
    # a prompt longer than the model's context loses its first tokens, as lm-eval cuts it (said in `truncated`)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    long = [len(c) + len(t) - 1 > context for c, t in pairs] if context else [False] * len(pairs)
    pairs = [(c[-(context + 1 - len(t)):] if cut else c, t) for (c, t), cut in zip(pairs, long, strict=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    scores = loglikelihoods(model, pairs, pad_id=pad_id, batch_size=batch_size, autocast=autocast)
    model.train(was_training)
    hits = {"acc": 0, "acc_norm": 0, "acc_per_token": 0}
    right, asked_in = Counter(), Counter()
    samples = []
    cursor = truncated = 0
    for question, _, choices in asked:
        ll = scores[cursor: cursor + len(choices)]
        lengths = [len(pairs[cursor + i][1]) for i in range(len(choices))]
        truncated += any(long[cursor: cursor + len(choices)])
        cursor += len(choices)
        picks = {"acc": _argmax(ll), "acc_norm": _argmax([v / len(c) for v, c in zip(ll, choices, strict=True)]),
                 "acc_per_token": _argmax([v / n for v, n in zip(ll, lengths, strict=True)])}
        for name, pick in picks.items():
            hits[name] += pick == question.answer
        subject = question.subject or "(none)"
        right[subject] += picks["acc"] == question.answer
        asked_in[subject] += 1
        samples.append({"question": question.question, "subject": question.subject, "answer": question.answer,
                        "chosen": picks["acc"],
                        "loglikelihoods": ll})
    scores: dict = {name: 100.0 * count / len(asked) for name, count in hits.items()}
    if truncated:
        scores["truncated"] = truncated  # questions whose prompt lost its start to fit the model's context
    if len(asked_in) > 1:
        scores["subjects"] = {subject: 100.0 * right[subject] / asked_in[subject] for subject in sorted(asked_in)}
    return scores, samples


def bench_scores(model, tokenizer, questions: Sequence[Question], **options) -> tuple[dict, list[dict]]:
    """`score_questions` named as a run's scores name them (`bench_acc`, `bench_subjects`, ...)."""
    scores, samples = score_questions(model, tokenizer, questions, **options)
    return {f"bench_{name}": value for name, value in scores.items()}, samples


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
