"""Turn an `Example` into token ids and labels: the one place that decides which tokens are trained.

Chat examples are rendered with the tokenizer's own chat template. Which characters belong to an
assistant turn is found by rendering incrementally — the conversation up to a turn with the generation
prompt, then including the turn — which works for any template that renders earlier turns the same way
whatever follows (we check that, and refuse templates that do not). That is done once per conversation
shape (roles, empty contents, trained turns): it teaches the shape's layout, the template's text around
each content, and every other conversation of the shape is rendered once and its spans read off that
layout, or rendered incrementally where its rendering does not fit it. The trained span of a turn is its
rendered text without trailing whitespace, so the end-of-turn token (`<|im_end|>`, `<|eot_id|>`, EOS...)
is trained and the newline the template puts after it is not. Character spans map to tokens through
the fast tokenizer's offsets; labels never depend on token ids, so pad == eos cannot mask the EOS.

Text in the data is text: a message whose content contains a control token's spelling (`<|im_end|>`, say)
is encoded as the ordinary tokens of those characters, never as the control token, so a record cannot
forge turns, and an assistant turn that quotes a marker does not train the model to emit it. Only the
template's own markers become control tokens (RELIABILITY.md, promise 15).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from tuneforge.config import IGNORE_INDEX
from tuneforge.data.formats import Example
from tuneforge.errors import TemplateError

__all__ = ["IGNORE_INDEX", "Encoded", "control_lookalikes", "encode_batch", "encode_example", "end_of_turn_ids",
           "use_chat_template"]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    turn_ends: tuple[int, ...]  # index of the last trained token of each assistant turn

    def __len__(self) -> int:
        return len(self.input_ids)


def use_chat_template(tokenizer, template: str) -> bool:
    """Whether examples are rendered with the chat template ('auto': when the tokenizer has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_template:
        raise TemplateError("data.template is 'chat' but the tokenizer has no chat template\n"
                            "  fix: set data.template: plain, or use a model whose tokenizer has a chat template")
    return has_template if template == "auto" else template == "chat"


def encode_example(example: Example, tokenizer, *, chat: bool, train_on_prompt: bool = False) -> Encoded:
    return encode_batch([example], tokenizer, chat=chat, train_on_prompt=train_on_prompt)[0]


def encode_batch(examples: Sequence[Example], tokenizer, *, chat: bool, train_on_prompt: bool = False) -> list[Encoded]:
    return [e for block in encode_blocks(examples, tokenizer, chat=chat, train_on_prompt=train_on_prompt)
            for e in block]


BLOCK = 2048  # examples rendered (here) while the block before is tokenized (in Rust, without the GIL)


def encode_blocks(examples: Sequence[Example], tokenizer, *, chat: bool,
                  train_on_prompt: bool = False) -> Iterator[list[Encoded]]:
    """The examples' encodings, a block of `BLOCK` at a time, in order. A block's conversations are rendered here
    while the block before is tokenized on a worker thread (the Rust tokenizer releases the GIL and runs a batch on
    every core), and a block is given out as soon as it is labelled, so what the caller does with it (the length
    policy, the cache) also overlaps the next block's tokenizing. Only the worker touches the tokenizer's state."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-tokenize") as worker:
        pending = None
        for start in range(0, len(examples), BLOCK):
            block = examples[start:start + BLOCK]
            templated = [chat and e.is_chat for e in block]
            rendered = _rendered_spans([e for e, t in zip(block, templated, strict=True) if t], tokenizer)
            job = worker.submit(_tokenized, tokenizer, block, templated, [text for text, _ in rendered])
            if pending is not None:
                yield _labelled(*pending, train_on_prompt)
            pending = (rendered, job)
        if pending is not None:
            yield _labelled(*pending, train_on_prompt)


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that legitimately end an assistant turn: EOS plus template end markers the vocab knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>"):
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def render_chat(tokenizer, messages, *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _renders(examples: Sequence[Example], tokenizer) -> list[tuple[str, list[str], list[str]]]:
    """Per example: the full rendering, and for each trained assistant turn the rendering up to it (with the
    generation prompt) and through it. All in one batched template call per kind (far less per-call
    overhead than one call per rendering)."""
    full_jobs, before_jobs, through_jobs, plan = [], [], [], []
    for example in examples:
        messages = list(example.messages)
        turns = _trained_turns(example)
        plan.append(turns)
        full_jobs.append(messages)
        before_jobs.extend(messages[:i] for i in turns)
        through_jobs.extend(messages[: i + 1] for i in turns if i != len(messages) - 1)
    full = _render_many(tokenizer, full_jobs, add_generation_prompt=False)
    before = _render_many(tokenizer, before_jobs, add_generation_prompt=True)
    through = iter(_render_many(tokenizer, through_jobs, add_generation_prompt=False))
    out, cursor = [], 0
    for example, turns, text in zip(examples, plan, full, strict=True):
        befores = before[cursor: cursor + len(turns)]
        cursor += len(turns)
        throughs = [text if i == len(example.messages) - 1 else next(through) for i in turns]
        out.append((text, befores, throughs))
    return out


def _trained_turns(example: Example) -> list[int]:
    return [i for i, m in enumerate(example.messages) if m["role"] == "assistant" and i >= example.prompt_turns]


def _render_many(tokenizer, conversations: list[list[dict]], *, add_generation_prompt: bool) -> list[str]:
    if not conversations:
        return []
    render = _direct_renderer(tokenizer)
    if render is None:
        return tokenizer.apply_chat_template(conversations, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    return [render(messages, add_generation_prompt) for messages in conversations]


_PROBE = ({"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"})


def _direct_renderer(tokenizer):
    """The compiled chat template called directly, as `apply_chat_template` calls it, without its per-call copying
    and checking of the messages (a third of the rendering time): tuneforge's messages are plain {role, content}
    strings already. Used where it renders a probe conversation exactly as `apply_chat_template` does; otherwise (or
    where transformers does not have the compiler) None, and the public call is used."""
    learned = _learned(tokenizer)
    if "renderer" in learned:
        return learned["renderer"]
    render = None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(tokenizer.chat_template)
        kwargs = dict(tokenizer.special_tokens_map)

        def render(messages, add_generation_prompt):
            return compiled.render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **kwargs)

        probes = [(list(messages), prompt) for messages in (_PROBE, _PROBE[1:]) for prompt in (False, True)]
        if any(render(m, p) != tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=p)
               for m, p in probes):
            render = None
    except Exception:  # no compiler in this transformers, or a template that refuses the probe: the public call
        render = None
    learned["renderer"] = render
    return render


def _spans_from_renders(example: Example, full: str, befores: list[str],
                        throughs: list[str]) -> tuple[str, list[tuple[int, int]]]:
    spans = []
    for index, before, through in zip(_trained_turns(example), befores, throughs, strict=True):
        if not through.startswith(before) or not full.startswith(through):
            raise TemplateError(
                f"{example.location}: the chat template renders turn {index} differently depending on what "
                "follows it, so the assistant tokens cannot be located reliably\n"
                "  fix: use a chat template that renders earlier turns unchanged (set the tokenizer's "
                "chat_template), or set data.template: plain")
        end = len(through.rstrip())
        if end <= len(before):
            raise TemplateError(f"{example.location}: the chat template dropped assistant turn {index}\n"
                                "  fix: check the template handles the 'assistant' role")
        spans.append((len(before), end))
    return full, spans


@dataclass(frozen=True)
class _Layout:
    """How the chat template lays out conversations of one shape (roles, which contents are empty, which turns
    are trained), learned from one conversation rendered incrementally: the template's text before each message's
    content and after the last, and for each trained turn how far its span starts before its content and how far
    the turn's rendering runs past it."""

    between: tuple[str, ...]
    trailer: str
    leads: tuple[int, ...]
    tails: tuple[int, ...]

    @classmethod
    def learn(cls, example: Example, full: str, spans: list[tuple[int, int]],
              throughs: list[str]) -> _Layout | None:
        """The layout, or None where the contents are not in the rendering verbatim (a template that trims or
        escapes them) or a span does not sit around its own content."""
        between, starts, cursor = [], [], 0
        for message in example.messages:
            at = full.find(message["content"], cursor)
            if at < 0:
                return None
            between.append(full[cursor:at])
            starts.append(at)
            cursor = at + len(message["content"])
        ends = [start + len(m["content"]) for start, m in zip(starts, example.messages, strict=True)]
        leads, tails = [], []
        for i, (start, _), through in zip(_trained_turns(example), spans, throughs, strict=True):
            # the span must begin and the turn's rendering end in template text, which the layout pins down
            if not (ends[i - 1] if i else 0) <= start <= starts[i] \
                    or not ends[i] <= len(through) <= (starts[i + 1] if i + 1 < len(starts) else len(full)):
                return None
            leads.append(starts[i] - start)
            tails.append(len(through) - ends[i])
        return cls(tuple(between), full[cursor:], tuple(leads), tuple(tails))

    def spans(self, example: Example, full: str) -> list[tuple[int, int]] | None:
        """The trained spans of a conversation of this shape, read off its full rendering; None where the
        rendering differs from the layout anywhere outside the contents."""
        starts, cursor = [], 0
        for between, message in zip(self.between, example.messages, strict=True):
            if not full.startswith(between, cursor):
                return None
            cursor += len(between)
            if not full.startswith(message["content"], cursor):
                return None
            starts.append(cursor)
            cursor += len(message["content"])
        if len(full) - cursor != len(self.trailer) or not full.endswith(self.trailer):
            return None
        spans = []
        for i, lead, tail in zip(_trained_turns(example), self.leads, self.tails, strict=True):
            start, end = starts[i] - lead, starts[i] + len(example.messages[i]["content"]) + tail
            while end > start and full[end - 1].isspace():  # the turn's rendering, trailing whitespace off
                end -= 1
            if end <= start:
                return None
            spans.append((start, end))
        return spans


def _shape(example: Example) -> tuple:
    return tuple((m["role"], not m["content"]) for m in example.messages), example.prompt_turns


# per tokenizer, what was learned of its chat template: (template and special tokens, direct renderer, layouts by
# shape). Kept beside the tokenizer, not on it: a compiled template cannot be pickled, and tokenizers are.
_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _learned(tokenizer) -> dict:
    key = (tokenizer.chat_template, tuple(sorted(map(str, tokenizer.special_tokens_map.items()))))
    learned = _LEARNED.get(tokenizer)
    if learned is None or learned["key"] != key:
        learned = _LEARNED[tokenizer] = {"key": key, "layouts": {}}
    return learned


def _layouts(tokenizer) -> dict[tuple, _Layout | None]:
    """The layouts learned for the tokenizer's chat template (they depend on the template and the special tokens
    it is given)."""
    return _learned(tokenizer)["layouts"]


def _rendered_spans(examples: Sequence[Example], tokenizer) -> list[tuple[str, list[tuple[int, int]]]]:
    """Each conversation's rendering and trained character spans, rendering each conversation once: the spans are
    read off the full rendering by the layout of the conversation's shape, learned by rendering the first
    conversation of that shape incrementally (`_renders`). A conversation that does not fit its shape's layout,
    and every conversation of a shape without one, is rendered incrementally, as all were before."""
    layouts = _layouts(tokenizer)
    full = _render_many(tokenizer, [list(e.messages) for e in examples], add_generation_prompt=False)
    out: list = [None] * len(examples)
    unknown: dict[tuple, int] = {}
    for index, example in enumerate(examples):
        shape = _shape(example)
        if shape not in layouts:
            unknown.setdefault(shape, index)
    learners = list(unknown.values())
    for index, rendered in zip(learners, _renders([examples[i] for i in learners], tokenizer), strict=True):
        example = examples[index]
        text, spans = _spans_from_renders(example, *rendered)
        layouts[_shape(example)] = _Layout.learn(example, text, spans, rendered[2])
        out[index] = (text, spans)
    misfits = []
    for index, (example, text) in enumerate(zip(examples, full, strict=True)):
        if out[index] is None:
            layout = layouts[_shape(example)]
            spans = layout.spans(example, text) if layout is not None else None
            if spans is None:
                misfits.append(index)
            else:
                out[index] = (text, spans)
    for index, rendered in zip(misfits, _renders([examples[i] for i in misfits], tokenizer), strict=True):
        out[index] = _spans_from_renders(examples[index], *rendered)
    return out


def _tokenized(tokenizer, block: Sequence[Example], templated: list[bool], texts: list[str]) -> list:
    """Per example: a rendered conversation's Rust encoding or its (ids, offsets), or the `Encoded` of an example
    not rendered with the template. A record that quotes a control token's spelling has its content encoded as
    text, and transformers' call applies a tokenizer's truncation or padding."""
    chats = [e for e, t in zip(block, templated, strict=True) if t]
    quoting = {i for i, e in enumerate(chats) if control_lookalikes(e.messages, tokenizer)}
    plain = [text for i, text in enumerate(texts) if i not in quoting]
    backend = tokenizer.backend_tokenizer
    if not plain:
        encodings = iter(())
    elif backend.truncation is not None or backend.padding is not None:
        enc = tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=False)
        encodings = iter(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    else:
        with _control_tokens_parsed(tokenizer, True):  # the template's markers (the data has none here)
            encodings = iter(backend.encode_batch(plain, add_special_tokens=False))
    texts_of = iter(enumerate(texts))
    out = []
    for example, is_templated in zip(block, templated, strict=True):
        if not is_templated:
            out.append(_encode_text(example.text or "", tokenizer) if not example.is_chat
                       else _encode_plain_pair(example, tokenizer))
            continue
        index, text = next(texts_of)
        out.append(_encode_with_text_content(tokenizer, text, example.messages, example.location)
                   if index in quoting else next(encodings))
    return out


def _labelled(rendered: list[tuple[str, list[tuple[int, int]]]], job: Future, train_on_prompt: bool) -> list[Encoded]:
    spans = (spans for _, spans in rendered)
    out = []
    for item in job.result():
        encoded = item if isinstance(item, Encoded) else (
            _label_spans(*item, next(spans)) if isinstance(item, tuple) else _label_spans_of(item, next(spans)))
        out.append(Encoded(encoded.input_ids, list(encoded.input_ids), encoded.turn_ends) if train_on_prompt
                   else encoded)
    return out


@contextmanager
def _control_tokens_parsed(tokenizer, parsed: bool) -> Iterator[None]:
    """Whether the tokenizer turns control-token spellings into control tokens, for the duration (transformers
    leaves the switch where the last call set it, so it is set and restored around each use here)."""
    backend = tokenizer.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = not parsed
    try:
        yield
    finally:
        backend.encode_special_tokens = before


def _label_spans_of(encoding, spans: list[tuple[int, int]]) -> Encoded:
    """Labels from a Rust `Encoding`, asking it only which tokens hold each span's first and last character
    (converting every token's offsets to Python was a third of the encoding time). A span's tokens are the
    contiguous run between those two; when a boundary character belongs to no token (a normaliser removed
    it), the general offset-based path decides."""
    ids = encoding.ids
    labels = [IGNORE_INDEX] * len(ids)
    turn_ends = []
    for start, end in spans:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return _label_spans(ids, encoding.offsets, spans)
        # a character split over several byte-level tokens: take every token that overlaps the span
        while first > 0 and encoding.token_to_chars(first - 1)[1] > start:
            first -= 1
        while last + 1 < len(ids) and encoding.token_to_chars(last + 1)[0] < end:
            last += 1
        labels[first:last + 1] = ids[first:last + 1]
        turn_ends.append(last)
    return Encoded(ids, labels, tuple(turn_ends))


def _label_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> Encoded:
    """Labels for the tokens that overlap an assistant span; the rest are IGNORE_INDEX. A turn ends at its
    last labelled token when the next token starts at or after the span's end."""
    labels = [IGNORE_INDEX] * len(ids)
    turn_ends = []
    span_index = 0
    for position, (start, end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if end > span_start and start < span_end and end > start:
            labels[position] = ids[position]
            if position + 1 == len(ids) or offsets[position + 1][0] >= span_end:
                turn_ends.append(position)
    return Encoded(list(ids), labels, tuple(turn_ends))


def _encode_plain_pair(example: Example, tokenizer) -> Encoded:
    """No chat template: prompt text then completion text then EOS; only the completion and EOS are trained."""
    roles = [m["role"] for m in example.messages]
    if roles != ["user", "assistant"]:
        raise TemplateError(f"{example.location}: a conversation with roles {roles} needs a chat template, but "
                            "the data is rendered as plain text\n  fix: use a tokenizer with a chat template "
                            "(data.template: chat), or prompt/completion records")
    prompt_ids = _text_ids(tokenizer, example.messages[0]["content"], add_special_tokens=True)
    completion_ids = _text_ids(tokenizer, example.messages[1]["content"], add_special_tokens=False)
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return Encoded(ids, labels, (len(ids) - 1,))


def _encode_text(text: str, tokenizer) -> Encoded:
    ids = [*_text_ids(tokenizer, text, add_special_tokens=True), tokenizer.eos_token_id]
    return Encoded(ids, list(ids), (len(ids) - 1,))


def _text_ids(tokenizer, text: str, *, add_special_tokens: bool) -> list[int]:
    """Token ids of data text, a control token's spelling in it encoded as ordinary text (BOS and the like
    are still added when asked for)."""
    with _control_tokens_parsed(tokenizer, False):
        return tokenizer.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


def _control_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching the spelling of any of the tokenizer's control (special) tokens, longest first; kept on
    the tokenizer object, and made again when tokens were added since."""
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)  # cheap, unlike added_tokens_decoder
    cached = getattr(tokenizer, "_tuneforge_control_pattern", None)
    if cached is not None and cached[0] == size:
        return cached[1]
    added = tokenizer.added_tokens_decoder
    spellings = sorted({t.content for t in added.values() if t.special and t.content}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, spellings))) if spellings else None
    tokenizer._tuneforge_control_pattern = (size, pattern)
    return pattern


def control_lookalikes(messages: Sequence[dict[str, str]], tokenizer) -> list[str]:
    """The control-token spellings that appear in the messages' text (data, not the template's markers)."""
    pattern = _control_pattern(tokenizer)
    if pattern is None:
        return []
    return [m.group(0) for message in messages for m in pattern.finditer(message.get("content") or "")]


def _encode_with_text_content(tokenizer, text: str, messages: Sequence[dict[str, str]],
                              location: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of a rendered conversation in which only the template's own markers are
    control tokens. A tokenizer splits its input at control tokens and encodes the pieces between them
    independently, so cutting at the template's markers only and encoding each piece with control-token
    matching off gives what the whole text would give if the quoted spellings were ordinary text."""
    spans, cursor = [], 0
    for message in messages:
        content = message.get("content") or ""
        at = text.find(content, cursor) if content else cursor
        if at < 0:
            quoted = control_lookalikes([message], tokenizer) or ["?"]
            raise TemplateError(f"{location}: a message quotes a control token ({quoted[0]!r}), and the chat "
                                "template changes the message text, so tuneforge cannot keep the quote as plain "
                                "text\n  fix: remove the control-token text from that record, or use a chat "
                                "template that renders contents unchanged")
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    markers = [m for m in _control_pattern(tokenizer).finditer(text)
               if not any(start <= m.start() < end for start, end in spans)]
    pieces, start = [], 0
    for marker in markers:
        pieces.append((start, marker.start()))
        start = marker.end()
    pieces.append((start, len(text)))
    with _control_tokens_parsed(tokenizer, False):
        encoded = tokenizer.backend_tokenizer.encode_batch([text[a:b] for a, b in pieces], add_special_tokens=False)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for index, (piece_start, _) in enumerate(pieces):
        ids += encoded[index].ids
        offsets += [(piece_start + a, piece_start + b) for a, b in encoded[index].offsets]
        if index < len(markers):
            ids.append(tokenizer.convert_tokens_to_ids(markers[index].group(0)))
            offsets.append((markers[index].start(), markers[index].end()))
    return ids, offsets


def generation_prompt_ids(tokenizer, messages, *, chat: bool) -> list[int]:
    """Token ids that prompt the model for the next assistant turn. Without a chat template, the last
    user message is the plain-text prompt (the same layout as plain-rendered training pairs)."""
    if chat:
        text = render_chat(tokenizer, messages, add_generation_prompt=True)
        if control_lookalikes(messages, tokenizer):
            return _encode_with_text_content(tokenizer, text, messages, "the prompt")[0]
        with _control_tokens_parsed(tokenizer, True):
            return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return _text_ids(tokenizer, messages[-1]["content"], add_special_tokens=True)


def prompt_ids_for_generation(example: Example, tokenizer, *, chat: bool) -> tuple[list[int], str] | None:
    """Prompt ids up to the example's last assistant turn, and that turn's content as the reference."""
    pair = example.prompt_and_reference()
    if pair is None:
        return None
    prompt_messages, reference = pair
    return generation_prompt_ids(tokenizer, prompt_messages, chat=chat), reference
