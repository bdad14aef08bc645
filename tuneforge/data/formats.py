"""Record formats: detect them, validate each record, and normalise it to an `Example`.

An `Example` is either a conversation (a list of role/content messages; what is trained is every
assistant turn), a plain text (every token trained), a preference pair: a prompt with a chosen and a
rejected response, each a conversation whose trained part is the response, or a rated completion (KTO): a
prompt and one response labelled desirable or not. Validation happens here, before any tokenizer
or model is loaded, so a bad record stops a run in a second with its file:line and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tuneforge.data.sources import RawRecord
from tuneforge.errors import DataError

OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                "function": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
LABEL_KEYS = ("label", "kto_tag", "tag")  # a rated record's verdict: TRL/tuneforge, LLaMA-Factory, others
FORMAT_KEYS = {  # detection order: a record with a verdict is rated whatever its layout; pairs before SFT
    "rated": (),
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
# the keys each format reads; others are reported once per file, since a key tuneforge does not read may be
# one the data's author meant (a label, a score, a system prompt)
USED_KEYS = {
    "rated": {"prompt", "completion", "messages", "conversations", "instruction", "input", "output", "system",
              "tools", *LABEL_KEYS},
    "preference": {"prompt", "chosen", "rejected", "instruction", "input", "system", "conversations", "messages",
                   "tools"},
    "messages": {"messages", "tools"},
    "sharegpt": {"conversations", "system", "tools"},
    "prompt_completion": {"prompt", "completion"},
    "alpaca": {"instruction", "input", "output", "system", "history"},
    "text": {"text"},
}
# bookkeeping keys published datasets carry next to the data (ShareGPT ids, UltraFeedback's prompt_id, OpenAI's
# parallel_tool_calls switch): not reported as unread
METADATA_KEYS = {"id", "idx", "prompt_id", "source", "dataset", "category", "lang", "language", "parallel_tool_calls"}
# keys that show a record's structure: a format that does not read them refuses the record (format, what it is)
STRUCTURE_KEYS = {
    "parent_id": ("oasst", "a message of a message tree (parent_id)"),
    "replies": ("oasst", "a message tree (replies)"),
    "role": ("oasst", "one message of a conversation (role)"),
    "chosen": ("preference", "a preference pair (chosen)"),
    "rejected": ("preference", "a preference pair (rejected)"),
    **{key: ("rated", f"a rated completion ({key})") for key in LABEL_KEYS},
    "messages": ("messages", "a conversation (messages)"),
    "conversations": ("sharegpt", "a conversation (conversations)"),
}
FORMAT_HELP = ("messages | conversations (ShareGPT) | prompt + completion | instruction + output (Alpaca) | text | "
               "chosen + rejected, with prompt or in full conversations (preference pairs, HH-RLHF) | any of the SFT "
               "layouts plus label / kto_tag (rated, for kto) | message_id + parent_id + role + text, or prompt + "
               "replies (OpenAssistant message trees)")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


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
    task: str | None = None  # the task its dataset was named for (`data.train: [{path, task}]`)

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
    """The record's format from its keys (a message tree's rows are told apart before, by `data.trees.is_tree`)."""
    data = record_object(record)
    if any(k in data for k in LABEL_KEYS) and _sft_layout(data) is not None:
        return "rated"
    for name, keys in FORMAT_KEYS.items():
        if keys and all(k in data for k in keys):
            return name
    raise DataError(record.path, record.where, None, f"cannot tell the record format from its keys "
                    f"{shown_keys(data)}", f"use one of: {FORMAT_HELP}; or set `format:` or `columns:` on the "
                    "dataset entry")


FIELD_NAME = re.compile(r"[A-Za-z_][\w .-]{0,39}")


def shown_keys(data: dict) -> str:
    """A record's keys for an error message: names that look like field names, at most 12; anything else (a
    file that is not data at all: a CSV 'header' that is really a line of some other file) is not echoed."""
    names = sorted(str(k) for k in data)
    fields = [n for n in names if FIELD_NAME.fullmatch(n)][:12]
    hidden = len(names) - len(fields)
    return str(fields) + (f" and {hidden} more not shown (not field names; is this a data file?)" if hidden else "")


def normalise(record: RawRecord, fmt: str) -> Example:
    record_object(record)
    return _NORMALISERS[fmt](record)


def unused_keys(record: RawRecord, fmt: str) -> list[str]:
    """The record's keys that its format does not read (ids and similar bookkeeping aside). A key that shows a
    structure the format would flatten (a message tree's parent ids, a pair's sides, a verdict, turns) refuses the
    record, naming the format that reads it: it is never trained in a shape it does not have."""
    unused = sorted(str(k) for k in record.data if k not in USED_KEYS[fmt] and k not in METADATA_KEYS)
    found = next(((key, *STRUCTURE_KEYS[key]) for key in unused if key in STRUCTURE_KEYS), None)
    if found:
        key, reader, what = found
        raise DataError(record.path, record.where, key, f"this record is {what}, which the {fmt} format does not "
                        f"read: it would train as {fmt} without that structure", f"use format: {reader} (or auto)")
    return unused


def record_object(record: RawRecord) -> dict:
    from tuneforge.data.sources import Malformed

    data = record.data
    if isinstance(data, Malformed):
        raise DataError(record.path, record.where, None, data.problem, data.fix)
    if not isinstance(data, dict):
        raise DataError(record.path, record.where, None, f"expected a JSON object, got {type(data).__name__}",
                        "each record must be an object such as {\"prompt\": ..., \"completion\": ...}")
    _require_valid_unicode(record, data)
    return data


def _require_valid_unicode(record: RawRecord, data: dict) -> None:
    """JSON can spell a lone surrogate (\\ud800), which is no character: no tokenizer can encode it."""
    try:
        field = next((str(k) for k, v in data.items() if not (_encodes(k) and _encodes(v))), None)
    except RecursionError:
        return  # nested too deeply to walk: the fields' own checks name what is wrong
    if field is not None:
        raise DataError(record.path, record.where, field, "holds a lone surrogate (a \\ud800-\\udfff escape "
                        "without its pair), which is not a character", "fix the escape, or remove the record")


def _encodes(value) -> bool:
    """Whether every string in the value is valid Unicode (an ASCII string is, and says so at no cost)."""
    if isinstance(value, str):
        if value.isascii():
            return True
        try:
            value.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if isinstance(value, dict):
        return all(_encodes(k) and _encodes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(map(_encodes, value))
    return True


def _sft_layout(data: dict) -> str | None:
    for name in ("messages", "sharegpt", "prompt_completion", "alpaca"):
        if all(k in data for k in FORMAT_KEYS[name]):
            return name
    return None


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
                   require_assistant: bool = True, turns=None) -> Example:
    turns = record.data.get(key) if turns is None else turns
    if not isinstance(turns, list) or not turns:
        raise DataError(record.path, record.where, key, f"expected a non-empty list of turns, got "
                        f"{excerpt(turns)}", f"make '{key}' a list like [{{\"{role_key}\": ..., "
                        f"\"{content_key}\": ...}}]")
    messages = [_turn(record, f"{key}[{index}]", turn, role_key, content_key, roles)
                for index, turn in enumerate(turns)]
    if require_assistant:
        _check_turn_order(record, key, messages)
    return Example(record.path, record.where, messages=tuple(messages))


def _turn(record: RawRecord, where: str, turn, role_key: str, content_key: str, roles: dict[str, str]) -> dict:
    """One message as {role, content}; an assistant's tool calls (OpenAI `tool_calls`, ShareGPT
    `function_call`) become `<tool_call>` JSON text in its content, the layout Hermes and Qwen models use."""
    if not isinstance(turn, dict):
        raise DataError(record.path, record.where, where, f"expected an object, got {type(turn).__name__}",
                        f"each turn needs '{role_key}' and '{content_key}'")
    role = turn.get(role_key)
    if not isinstance(role, str) or role not in roles:
        raise DataError(record.path, record.where, f"{where}.{role_key}", f"unknown role {excerpt(role)}",
                        f"use one of: {', '.join(sorted(roles))}")
    content = turn.get(content_key)
    calls = turn.get("tool_calls")
    if role == "function_call":  # ShareGPT: the value is the call as JSON
        calls, content = [_parsed_call(record, f"{where}.{content_key}", content)], ""
    if content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise DataError(record.path, record.where, f"{where}.{content_key}",
                        f"expected a string, got {type(content).__name__}", f"make '{content_key}' a string")
    if calls is not None:
        content = _with_tool_calls(record, f"{where}.tool_calls", content, calls)
    if roles[role] == "assistant" and not content.strip():
        raise DataError(record.path, record.where, f"{where}.{content_key}", "assistant turn is empty",
                        "give the assistant turn some text, or remove the record")
    return {"role": roles[role], "content": content}


def _parsed_call(record: RawRecord, where: str, value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(record.path, record.where, where, "a function call must be JSON text like "
                            '{"name": ..., "arguments": {...}}', "fix the JSON of this call") from None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise DataError(record.path, record.where, where, f"a function call needs a 'name', got {excerpt(value)}",
                        'write the call as {"name": ..., "arguments": {...}}')
    return {"function": {"name": value["name"], "arguments": value.get("arguments", {})}}


def _with_tool_calls(record: RawRecord, where: str, content: str, calls) -> str:
    if not isinstance(calls, list):
        raise DataError(record.path, record.where, where, f"expected a list of calls, got {excerpt(calls)}",
                        "write tool_calls as [{\"type\": \"function\", \"function\": {\"name\": ..., "
                        "\"arguments\": ...}}]")
    texts = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(record.path, record.where, f"{where}[{index}]", "a tool call needs function.name",
                            "write each call as {\"type\": \"function\", \"function\": {\"name\": ..., "
                            "\"arguments\": ...}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI sends the arguments as JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise DataError(record.path, record.where, f"{where}[{index}].function.arguments",
                                "not valid JSON", "write the arguments as a JSON object") from None
        call_json = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
        texts.append(f"{TOOL_CALL_OPEN}\n{call_json}\n{TOOL_CALL_CLOSE}")
    return "\n".join(filter(None, [content.strip(), *texts]))


def excerpt(value) -> str:
    """A short, clearly cut rendering of a value from the data for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_turn_order(record: RawRecord, key: str, messages: list[dict[str, str]]) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(record.path, record.where, key, "has no assistant turn, so nothing would be trained",
                        "add an assistant turn, or use the `text` format to train on everything")
    first_non_system = next(i for i, m in enumerate(messages) if m["role"] != "system")
    if messages[first_non_system]["role"] != "user":
        raise DataError(record.path, record.where, f"{key}[{first_non_system}]",
                        "the conversation must start with a user turn (after any system turns)",
                        "put the user's message before the first assistant turn")


def _with_tools(record: RawRecord, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Function definitions (`tools`, a list or its JSON text) join the system turn, so the model sees what it
    may call; the layout follows Hermes / Qwen (`<tools>` JSON)."""
    tools = record.data.get("tools")
    if tools in (None, "", []):
        return messages
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise DataError(record.path, record.where, "tools", "not valid JSON",
                            "give tools as a list of function definitions (or its JSON text)") from None
    if not isinstance(tools, list):
        raise DataError(record.path, record.where, "tools", f"expected a list, got {type(tools).__name__}",
                        "give tools as a list of function definitions")
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = (f"You may call these tools. For each call, answer with {TOOL_CALL_OPEN}{{\"name\": ..., \"arguments\": "
            f"...}}{TOOL_CALL_CLOSE}.\n<tools>\n{listing}\n</tools>")
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _conversation(record: RawRecord, layout: str) -> list[dict[str, str]]:
    """The messages of a record in one of the SFT layouts, every assistant turn to be trained."""
    if layout == "messages":
        messages = list(_messages_from(record, "messages", "role", "content", OPENAI_ROLES).messages)
    elif layout == "sharegpt":
        messages = list(_messages_from(record, "conversations", "from", "value", SHAREGPT_ROLES).messages)
        system = _require_text(record, "system", allow_empty=True, optional=True)
        if system.strip() and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
    elif layout == "prompt_completion":
        prompt, completion = _turns_or_text(record, "prompt", "user"), _turns_or_text(record, "completion", "assistant")
        if completion[0]["role"] != "assistant":
            raise DataError(record.path, record.where, "completion", "the completion must start with an assistant "
                            "turn", "make 'completion' the assistant's answer to the prompt")
        messages = [*prompt, *completion]
        _check_turn_order(record, "prompt", messages)
    else:
        messages = _alpaca_messages(record)
    return _with_tools(record, messages)


def _alpaca_messages(record: RawRecord, response_key: str | None = "output") -> list[dict[str, str]]:
    """Alpaca's system, history (earlier [instruction, response] pairs), instruction + input, and output."""
    instruction = _require_text(record, "instruction")
    extra_input = _require_text(record, "input", allow_empty=True, optional=True)
    system = _require_text(record, "system", allow_empty=True, optional=True)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    history = record.data.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list | tuple) and len(h) == 2 and
                                                all(isinstance(x, str) for x in h) for h in history):
        raise DataError(record.path, record.where, "history", "expected a list of [instruction, response] pairs",
                        "write history as [[\"earlier question\", \"earlier answer\"], ...]")
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra_input}" if extra_input.strip()
                     else instruction})
    if response_key is not None:
        messages.append({"role": "assistant", "content": _require_text(record, response_key)})
    return messages


def _from_messages(record: RawRecord) -> Example:
    return Example(record.path, record.where, messages=tuple(_conversation(record, "messages")))


def _from_sharegpt(record: RawRecord) -> Example:
    return Example(record.path, record.where, messages=tuple(_conversation(record, "sharegpt")))


def _from_prompt_completion(record: RawRecord) -> Example:
    return Example(record.path, record.where, messages=tuple(_conversation(record, "prompt_completion")))


def _from_alpaca(record: RawRecord) -> Example:
    return Example(record.path, record.where, messages=tuple(_conversation(record, "alpaca")))


# ----------------------------------------------------------------------------------- preference pairs

HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _from_preference(record: RawRecord) -> Example:
    """A prompt with a chosen and a rejected response. The responses are text, one message, a list of
    assistant messages, or whole conversations that include the prompt (UltraFeedback-binarized, TRL's
    implicit prompt, Anthropic HH-RLHF transcripts): then the turns both share are the prompt."""
    chosen, rejected = _response_turns(record, "chosen"), _response_turns(record, "rejected")
    if chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
        prompt, chosen, rejected = _split_shared_prompt(record, chosen, rejected)
    else:
        prompt = _preference_prompt(record)
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[0]["role"] != "assistant":
            raise DataError(record.path, record.where, key, "the response must start with an assistant turn",
                            f"make '{key}' the assistant's answer to the prompt")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise DataError(record.path, record.where, "prompt", "the prompt must end with a user turn",
                        "end 'prompt' with the user's message that the responses answer")
    _check_turn_order(record, "prompt", [*prompt, *chosen])
    prompt = _with_tools(record, prompt)
    return Example(record.path, record.where, messages=tuple(prompt + chosen), rejected=tuple(prompt + rejected),
                   prompt_turns=len(prompt))


def _response_turns(record: RawRecord, key: str) -> list[dict[str, str]]:
    value = record.data.get(key)
    if isinstance(value, str) and HH_TURN.match(value):
        return _hh_turns(record, key, value)
    if isinstance(value, dict):  # one message (LLaMA-Factory's ShareGPT pairs: {"from": "gpt", "value": ...})
        role_key, content_key, roles = (("from", "value", SHAREGPT_ROLES) if "from" in value
                                        else ("role", "content", OPENAI_ROLES))
        return [_turn(record, key, value, role_key, content_key, roles)]
    if isinstance(value, list):
        return list(_messages_from(record, key, "role", "content", OPENAI_ROLES, require_assistant=False).messages)
    return [{"role": "assistant", "content": _require_text(record, key)}]


def _hh_turns(record: RawRecord, key: str, transcript: str) -> list[dict[str, str]]:
    """An Anthropic HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages."""
    parts = HH_TURN.split(transcript)[1:]  # ["Human", text, "Assistant", text, ...]
    return [{"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
            for speaker, text in zip(parts[::2], parts[1::2], strict=True)]


def _split_shared_prompt(record: RawRecord, chosen: list[dict], rejected: list[dict]):
    """(prompt, chosen response, rejected response) from two whole conversations: the prompt is the longest
    shared run of turns that ends with a user (or tool) turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] not in ("user", "tool"):
        shared -= 1
    if not shared or shared == len(chosen) or shared == len(rejected):
        raise DataError(record.path, record.where, "chosen", "the chosen and rejected conversations do not share "
                        "a prompt followed by different answers", "give both the same turns up to the user's last "
                        "message, then each its own answer (or give 'prompt' and the answers alone)")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _preference_prompt(record: RawRecord) -> list[dict[str, str]]:
    data = record.data
    if "prompt" in data:
        return _turns_or_text(record, "prompt", "user")
    if "instruction" in data:  # LLaMA-Factory's Alpaca-style pairs
        return _alpaca_messages(record, response_key=None)
    for key, role_key, content_key, roles in (("conversations", "from", "value", SHAREGPT_ROLES),
                                              ("messages", "role", "content", OPENAI_ROLES)):
        if key in data:
            return list(_messages_from(record, key, role_key, content_key, roles, require_assistant=False).messages)
    raise DataError(record.path, record.where, "prompt", "missing: the responses are answers alone, so the record "
                    "needs the prompt they answer", "add 'prompt' (or give chosen and rejected as whole "
                    "conversations that include it)")


# ----------------------------------------------------------------------------------- rated (KTO)


def _from_rated(record: RawRecord) -> Example:
    """One response rated desirable or not, for KTO: {prompt, completion, label} as TRL writes it, or any SFT
    layout plus a verdict (`label`, or `kto_tag` as LLaMA-Factory writes it); the last assistant turn is the
    rated completion, what comes before it the prompt."""
    key = next((k for k in LABEL_KEYS if k in record.data), None)
    label = _verdict(record, key)
    layout = _sft_layout(record.data)
    if layout is None:
        raise DataError(record.path, record.where, None, "a rated record needs a conversation as well as its "
                        "verdict", "give prompt + completion, messages, conversations or instruction + output")
    messages = _conversation(record, layout)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return Example(record.path, record.where, messages=tuple(messages[: last + 1]), prompt_turns=last,
                   desirable=label)


def _verdict(record: RawRecord, key: str | None) -> bool:
    value = record.data.get(key) if key else None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # CSV has no booleans
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise DataError(record.path, record.where, key or "label", f"expected true or false, got {excerpt(value)}",
                        f"set '{key or 'label'}' to true for a desirable completion and false for an undesirable "
                        "one")
    return value


def with_kl_completions(examples: list[Example]) -> list[Example]:
    """KTO's reference point (Ethayarajh et al., 2024) is the policy's KL to the reference on completions
    that do not answer the prompt: each rated example gets, as its second sequence, its own prompt with the
    next record's completion (as TRL pairs them), computed with it in one forward and never trained toward."""
    out = []
    for index, example in enumerate(examples):
        other = examples[(index + 1) % len(examples)]
        mismatched = example.messages[:example.prompt_turns] + other.messages[other.prompt_turns:]
        out.append(Example(example.source, example.where, messages=example.messages, rejected=mismatched,
                           prompt_turns=example.prompt_turns, desirable=example.desirable, task=example.task))
    return out


def _turns_or_text(record: RawRecord, key: str, role: str) -> list[dict[str, str]]:
    """A field that is either plain text (one turn with `role`) or a list of role/content messages."""
    if isinstance(record.data.get(key), list):
        return list(_messages_from(record, key, "role", "content", OPENAI_ROLES, require_assistant=False).messages)
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
    data = record_object(record)
    if not ({"prompt", "messages"} & set(data)):
        raise DataError(record.path, record.where, None, "a prompt record needs 'prompt' (text or messages) or "
                        "'messages'", "write records like {\"prompt\": \"What is 2 + 2?\"}")
    if "prompt" in data:
        turns = _turns_or_text(record, "prompt", "user")
    else:
        turns = list(_messages_from(record, "messages", "role", "content", OPENAI_ROLES,
                                    require_assistant=False).messages)
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    if last_user is None:
        raise DataError(record.path, record.where, "prompt" if "prompt" in data else "messages",
                        "has no user turn to answer", "end the conversation with the user's message")
    return turns[: last_user + 1]
