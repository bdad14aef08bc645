"""Record formats: detect them, validate each record, and normalise it to an `Example`.

An `Example` is either a conversation (a list of role/content messages; what is trained is every
assistant turn), a plain text (every token trained), a preference pair: a prompt with a chosen and a
rejected response, each a conversation whose trained part is the response, or a rated completion (KTO): a
prompt and one response labelled desirable or not. Validation happens here, before any tokenizer
or model is loaded, so a bad record stops a run in a second with its file:line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.data.sources import RawRecord
from tuneforge.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
FORMAT_KEYS = {
    "preference": ("prompt", "chosen", "rejected"),
    "rated": ("prompt", "completion", "label"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
FORMAT_HELP = ("messages | conversations (ShareGPT) | prompt + completion | instruction + output (Alpaca) | text | "
               "prompt + chosen + rejected (preference pairs) | prompt + completion + label (rated, for kto)")


@dataclass(frozen=True)
class Example:
    """One normalised training example and where it came from."""

    source: str
    where: int | str
    messages: tuple[dict[str, str], ...] = field(default=())
    text: str | None = None
    rejected: tuple[dict[str, str], ...] = field(default=())  # a preference pair: prompt + rejected response
    prompt_turns: int = 0  # messages[:prompt_turns] are the prompt; assistant turns in it are not trained
    desirable: bool | None = None  # a rated completion (KTO): its label; None for every other record

    @property
    def location(self) -> str:
        return f"{self.source}:{self.where}"

    @property
    def is_chat(self) -> bool:
        return self.text is None

    @property
    def is_pair(self) -> bool:
        return bool(self.rejected) and self.desirable is None

    @property
    def is_rated(self) -> bool:
        return self.desirable is not None

    def rejected_side(self) -> Example:
        """The rejected conversation as an example of its own (same origin, same prompt)."""
        return Example(self.source, self.where, messages=self.rejected, prompt_turns=self.prompt_turns)

    def prompt_and_reference(self) -> tuple[tuple[dict[str, str], ...], str] | None:
        """The conversation up to its last assistant turn, and that turn's content (for generation metrics)."""
        if not self.is_chat:
            return None
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last], self.messages[last]["content"]


def detect_format(record: RawRecord) -> str:
    data = record.data
    if not isinstance(data, dict):
        raise DataError(record.path, record.where, None, f"expected a JSON object, got {type(data).__name__}",
                        "each record must be an object such as {\"prompt\": ..., \"completion\": ...}")
    for name, keys in FORMAT_KEYS.items():
        if all(k in data for k in keys):
            return name
    raise DataError(record.path, record.where, None,
                    f"cannot tell the record format from its keys {sorted(data)}",
                    f"use one of: {FORMAT_HELP}; or set `format:` on the dataset entry")


def normalise(record: RawRecord, fmt: str) -> Example:
    if not isinstance(record.data, dict):
        raise DataError(record.path, record.where, None, f"expected a JSON object, got {type(record.data).__name__}",
                        "each record must be an object")
    return _NORMALISERS[fmt](record)


def _require_text(record: RawRecord, key: str, *, allow_empty: bool = False, optional: bool = False) -> str:
    data = record.data
    if key not in data or data[key] is None:
        if optional:
            return ""
        raise DataError(record.path, record.where, key, "missing",
                        f"add a '{key}' string to this record, or fix the dataset's `format:`")
    value = data[key]
    if not isinstance(value, str):
        raise DataError(record.path, record.where, key, f"expected a string, got {type(value).__name__}",
                        f"make '{key}' a string")
    if not allow_empty and not value.strip():
        raise DataError(record.path, record.where, key, "is empty",
                        f"give '{key}' some text, or remove the record")
    return value


def _messages_from(record: RawRecord, key: str, role_key: str, content_key: str, roles: dict[str, str], *,
                   require_assistant: bool = True) -> Example:
    turns = record.data.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(record.path, record.where, key, f"expected a non-empty list of turns, got {turns!r:.60}",
                        f"make '{key}' a list like [{{\"{role_key}\": ..., \"{content_key}\": ...}}]")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(record.path, record.where, where, f"expected an object, got {type(turn).__name__}",
                            f"each turn needs '{role_key}' and '{content_key}'")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:
            raise DataError(record.path, record.where, f"{where}.{role_key}", f"unknown role {role!r}",
                            f"use one of: {', '.join(sorted(roles))}")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise DataError(record.path, record.where, f"{where}.{content_key}",
                            f"expected a string, got {type(content).__name__}", f"make '{content_key}' a string")
        if roles[role] == "assistant" and not content.strip():
            raise DataError(record.path, record.where, f"{where}.{content_key}", "assistant turn is empty",
                            "give the assistant turn some text, or remove the record")
        messages.append({"role": roles[role], "content": content})
    if require_assistant:
        _check_turn_order(record, key, messages)
    return Example(record.path, record.where, messages=tuple(messages))


def _check_turn_order(record: RawRecord, key: str, messages: list[dict[str, str]]) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(record.path, record.where, key, "has no assistant turn, so nothing would be trained",
                        "add an assistant turn, or use the `text` format to train on everything")
    first_non_system = next(i for i, m in enumerate(messages) if m["role"] != "system")
    if messages[first_non_system]["role"] != "user":
        raise DataError(record.path, record.where, f"{key}[{first_non_system}]",
                        "the conversation must start with a user turn (after any system turns)",
                        "put the user's message before the first assistant turn")


def _from_messages(record: RawRecord) -> Example:
    return _messages_from(record, "messages", "role", "content", {r: r for r in ROLES})


def _from_sharegpt(record: RawRecord) -> Example:
    return _messages_from(record, "conversations", "from", "value", SHAREGPT_ROLES)


def _from_prompt_completion(record: RawRecord) -> Example:
    prompt = _require_text(record, "prompt")
    completion = _require_text(record, "completion")
    messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": completion})
    return Example(record.path, record.where, messages=messages)


def _from_alpaca(record: RawRecord) -> Example:
    instruction = _require_text(record, "instruction")
    extra_input = _require_text(record, "input", allow_empty=True, optional=True)
    output = _require_text(record, "output")
    system = _require_text(record, "system", allow_empty=True, optional=True)
    user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Example(record.path, record.where, messages=tuple(messages))


def _from_preference(record: RawRecord) -> Example:
    """{"prompt", "chosen", "rejected"}: each a string, or a list of messages (the prompt's last turn from the
    user, the responses' turns from the assistant)."""
    prompt = _turns_or_text(record, "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise DataError(record.path, record.where, "prompt", "the prompt must end with a user turn",
                        "end 'prompt' with the user's message that the responses answer")
    chosen, rejected = _turns_or_text(record, "chosen", "assistant"), _turns_or_text(record, "rejected", "assistant")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[0]["role"] != "assistant":
            raise DataError(record.path, record.where, key, "the response must start with an assistant turn",
                            f"make '{key}' the assistant's answer to the prompt")
    prompt_record = RawRecord(record.path, record.where, {"messages": [*prompt, *chosen]})
    _check_turn_order(prompt_record, "prompt", [*prompt, *chosen])
    return Example(record.path, record.where, messages=tuple(prompt + chosen), rejected=tuple(prompt + rejected),
                   prompt_turns=len(prompt))


def _from_rated(record: RawRecord) -> Example:
    """{"prompt", "completion", "label"}: a response rated good (true) or bad (false), for KTO. Prompt and
    completion are strings or message lists, as in preference pairs."""
    prompt = _turns_or_text(record, "prompt", "user")
    completion = _turns_or_text(record, "completion", "assistant")
    label = record.data["label"]
    if not isinstance(label, bool):
        raise DataError(record.path, record.where, "label", f"expected true or false, got {label!r:.40}",
                        "set 'label' to true for a desirable completion and false for an undesirable one")
    if prompt[-1]["role"] != "user" or completion[0]["role"] != "assistant":
        raise DataError(record.path, record.where, "completion", "the prompt must end with a user turn and the "
                        "completion start with an assistant turn", "make 'completion' the assistant's answer")
    _check_turn_order(RawRecord(record.path, record.where, {}), "prompt", [*prompt, *completion])
    return Example(record.path, record.where, messages=tuple(prompt + completion), prompt_turns=len(prompt),
                   desirable=label)


def with_kl_completions(examples: list[Example]) -> list[Example]:
    """KTO's reference point (Ethayarajh et al., 2024) is the policy's KL to the reference on completions
    that do not answer the prompt: each rated example gets, as its second sequence, its own prompt with the
    next record's completion (as TRL pairs them), computed with it in one forward and never trained toward."""
    out = []
    for index, example in enumerate(examples):
        other = examples[(index + 1) % len(examples)]
        mismatched = example.messages[:example.prompt_turns] + other.messages[other.prompt_turns:]
        out.append(Example(example.source, example.where, messages=example.messages, rejected=mismatched,
                           prompt_turns=example.prompt_turns, desirable=example.desirable))
    return out


def _turns_or_text(record: RawRecord, key: str, role: str) -> list[dict[str, str]]:
    """A field that is either plain text (one turn with `role`) or a list of role/content messages."""
    if isinstance(record.data.get(key), list):
        return list(_messages_from(record, key, "role", "content", {r: r for r in ROLES},
                                   require_assistant=False).messages)
    return [{"role": role, "content": _require_text(record, key)}]


def _from_text(record: RawRecord) -> Example:
    return Example(record.path, record.where, text=_require_text(record, "text"))


_NORMALISERS = {
    "preference": _from_preference,
    "rated": _from_rated,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "prompt_completion": _from_prompt_completion,
    "alpaca": _from_alpaca,
    "text": _from_text,
}


def prompt_of(record: RawRecord) -> list[dict[str, str]]:
    """The conversation a model should answer: `prompt` (text or messages), or `messages` up to the last user
    turn (so SFT or preference files serve as prompt files too)."""
    data = record.data
    if not isinstance(data, dict) or not ({"prompt", "messages"} & set(data)):
        raise DataError(record.path, record.where, None, "a prompt record needs 'prompt' (text or messages) or "
                        "'messages'", "write records like {\"prompt\": \"What is 2 + 2?\"}")
    if "prompt" in data:
        turns = _turns_or_text(record, "prompt", "user")
    else:
        turns = list(_messages_from(record, "messages", "role", "content", {r: r for r in ROLES},
                                    require_assistant=False).messages)
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    if last_user is None:
        raise DataError(record.path, record.where, "prompt" if "prompt" in data else "messages",
                        "has no user turn to answer", "end the conversation with the user's message")
    return turns[: last_user + 1]
