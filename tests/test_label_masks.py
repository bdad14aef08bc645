"""Label masks: across chat templates and turn layouts, exactly each assistant turn's content and its
end-of-turn token are trained — never the prompt, never the template's trailing newline."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data.batching import collate
from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.render import IGNORE_INDEX, encode_example, end_of_turn_ids
from tuneforge.errors import TemplateError

TEMPLATES = {
    # name: (jinja template, end-of-turn marker, special tokens to add, supports system role)
    "chatml": (None, "<|im_end|>", [], True),
    "llama3": ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
               "<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], True),
    "zephyr": ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '</s>\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
               "</s>", ["<|user|>", "<|assistant|>", "<|system|>", "</s>"], True),
    "gemma": ("{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) "
              "+ '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<start_of_turn>model\n' }}{% endif %}",
              "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"], False),
    "mistral": ("{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                "' [/INST]' }}{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}",
                "</s>", ["<s>", "</s>", "[INST]", "[/INST]"], False),
}


@pytest.fixture(scope="module")
def templated(tokenizer):
    """One tokenizer per template family, built from the default tokenizer with the family's tokens."""
    made = {}
    for name, (template, _, specials, _) in TEMPLATES.items():
        tok = copy.deepcopy(tokenizer)
        if specials:
            tok.add_special_tokens({"additional_special_tokens": specials})
        if template:
            tok.chat_template = template
        made[name] = tok
    return made


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 .,?!-", min_size=1, max_size=40).map(str.strip)
content = words.filter(bool)


@st.composite
def conversations(draw, with_system: bool):
    messages = []
    if with_system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(content)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": "USER " + draw(content)})
        messages.append({"role": "assistant", "content": draw(content)})
    return messages


def trained_runs(encoded, tok) -> list[str]:
    runs, current = [], []
    for token_id, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token_id)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


@pytest.mark.parametrize("family", sorted(TEMPLATES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_only_assistant_turns_and_their_end_token_are_trained(templated, family, data):
    _, marker, _, system = TEMPLATES[family]
    tok = templated[family]
    messages = data.draw(conversations(with_system=system))
    encoded = encode_example(Example("t.jsonl", 1, messages=tuple(messages)), tok, chat=True)
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    assert trained_runs(encoded, tok) == [c + marker for c in assistant]
    assert len(encoded.turn_ends) == len(assistant)
    assert all(encoded.input_ids[i] in end_of_turn_ids(tok) for i in encoded.turn_ends)
    assert "USER" not in "".join(trained_runs(encoded, tok))


@settings(max_examples=25, deadline=None)
@given(messages=conversations(with_system=True))
def test_train_on_prompt_trains_every_token(tokenizer, messages):
    encoded = encode_example(Example("t.jsonl", 1, messages=tuple(messages)), tokenizer, chat=True,
                             train_on_prompt=True)
    assert encoded.labels == encoded.input_ids


def test_eos_is_trained_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: both are <|im_end|>
    example = Example("t.jsonl", 1, messages=({"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}))
    short = TrainExample(0, example, encode_example(example, tokenizer, chat=True))
    longer = Example("t.jsonl", 2, messages=({"role": "user", "content": "hi " * 20},
                                             {"role": "assistant", "content": "hello"}))
    batch = collate([short, TrainExample(1, longer, encode_example(longer, tokenizer, chat=True))],
                    tokenizer.pad_token_id)
    row_labels = batch["labels"][0].tolist()
    (end,) = short.encoded.turn_ends
    assert batch["input_ids"][0, end] == tokenizer.eos_token_id and row_labels[end] == tokenizer.eos_token_id
    assert all(label == IGNORE_INDEX for label in row_labels[end + 1:])  # trailing newline and padding


def test_plain_rendering_without_template(tokenizer):
    example = Example("t.jsonl", 1, messages=({"role": "user", "content": "Question?"},
                                              {"role": "assistant", "content": " Answer."}))
    encoded = encode_example(example, tokenizer, chat=False)
    assert tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX]) == " Answer.<|im_end|>"
    text = encode_example(Example("t.jsonl", 1, text="Some text"), tokenizer, chat=True)
    assert text.labels == text.input_ids and text.input_ids[-1] == tokenizer.eos_token_id


def test_template_that_rewrites_history_is_refused(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # renders only the last assistant turn's content: earlier turns change once a later turn exists
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ 'A: ...\n' }}"
                         "{% else %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    messages = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"})
    with pytest.raises(TemplateError, match="renders turn 1 differently"):
        encode_example(Example("t.jsonl", 3, messages=messages), tok, chat=True)


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \n😀é中ß.,")), min_size=1, max_size=12),
       st.text(alphabet=st.sampled_from(list("xy \n😀é中ß")), min_size=1, max_size=12))
def test_fast_label_path_equals_the_offset_path(tokenizer, prompt, answer):
    """The boundary-only label path gives exactly the labels of the per-token offset rule, multi-byte
    characters at the span edges included."""
    from tuneforge.data.render import _label_spans, _label_spans_of

    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    start = text.index("assistant\n") + len("assistant\n")
    spans = [(start, len(text.rstrip()))]
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    assert _label_spans_of(encoding, spans) == _label_spans(encoding.ids, encoding.offsets, spans)


EXTRA_TEMPLATES = {  # templates the layout path must not misread: contents trimmed, a block only on the last turn
    "trimming": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "think-last": ("{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}{{ '<|im_start|>assistant\n"
                   "<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + "
                   "m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
}
tricky = st.one_of(content, st.sampled_from(["user", "assistant", "system", "model", "a", " padded ", "\n"]))


@st.composite
def shaped_conversations(draw):
    messages = [{"role": "system", "content": draw(tricky)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(tricky)}, {"role": "assistant", "content": draw(tricky)}]
    return messages


@pytest.fixture(scope="module")
def shaped(templated, tokenizer):
    made = dict(templated)
    for name, template in EXTRA_TEMPLATES.items():
        made[name] = copy.deepcopy(tokenizer)
        made[name].chat_template = template
    return made


@pytest.mark.parametrize("family", [*sorted(TEMPLATES), *sorted(EXTRA_TEMPLATES)])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(shaped_conversations(), min_size=1, max_size=8))
def test_spans_read_off_one_rendering_equal_the_incremental_renderings(shaped, family, batch):
    """Each conversation is rendered once and its spans read off by its shape's layout: exactly the spans (or the
    refusal) that rendering every turn incrementally gives, contents that spell the template's words included."""
    from tuneforge.data import render

    tok = shaped[family]
    render._LEARNED.pop(tok, None)  # learned afresh from this batch
    if family in TEMPLATES and not TEMPLATES[family][3]:
        batch = [[m for m in messages if m["role"] != "system"] for messages in batch]
    examples = [Example("t.jsonl", i, messages=tuple(messages)) for i, messages in enumerate(batch)]
    try:
        expected = [render._spans_from_renders(e, *r) for e, r in zip(examples, render._renders(examples, tok),
                                                                         strict=True)]
    except TemplateError:
        with pytest.raises(TemplateError):
            render._rendered_spans(examples, tok)
        return
    assert render._rendered_spans(examples, tok) == expected
    assert render._rendered_spans(examples, tok) == expected  # again, with every layout already learned
    assert family in EXTRA_TEMPLATES or len(render._layouts(tok)) <= len({render._shape(e) for e in examples})


def test_layouts_read_most_conversations(templated, monkeypatch):
    """The fast path is taken: after the first conversation of a shape, no conversation is rendered again (and
    the tokenizer still pickles, as datasets and DataLoader workers need)."""
    from tuneforge.data import render

    tok = templated["chatml"]
    render._LEARNED.pop(tok, None)
    examples = [Example("t.jsonl", i, messages=({"role": "user", "content": f"question {i}"},
                                                {"role": "assistant", "content": f"answer {i}"}))
                for i in range(20)]
    calls, real = [], render._renders
    monkeypatch.setattr(render, "_renders", lambda batch, t: calls.append(len(batch)) or real(batch, t))
    render._rendered_spans(examples, tok)
    assert calls == [1, 0]
    assert pickle.loads(pickle.dumps(tok)).chat_template == tok.chat_template  # nothing unpicklable left on it
