"""Message trees (OpenAssistant's oasst1 / oasst2 layout): each prompt has several replies, each reply its own
replies, ranked among their siblings by reviewers (rank 0 the best). Published as one row per message
(`message_id`, `parent_id`, `role` prompter | assistant, `text`, `rank`, ...) or one tree per record (`prompt` with
nested `replies`). A tree is rebuilt into conversations across the records that hold it, as `data.train[].tree`
asks: `best` (default) follows the best-ranked reply at every turn, one conversation per tree; `all` gives one per
path from the prompt to each leaf; `pairs` gives a preference pair wherever a prompter's message has ranked
assistant replies (the best against the worst, after the conversation that led there). Deleted messages and those
reviewers rejected are left out with their replies. The prompter's turns are the user's: only assistant turns
train."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.data.formats import Example, excerpt, record_object
from tuneforge.data.sources import RawRecord
from tuneforge.errors import DataError

ROLES = {"prompter": "user", "assistant": "assistant"}
ROW_KEYS = ("message_id", "parent_id", "role", "text")


def is_tree(data: dict) -> bool:
    """A message row (its id, its parent's, its role) or a whole tree (`prompt` with `replies`)."""
    return all(k in data for k in ROW_KEYS) or (isinstance(data.get("prompt"), dict) and "replies" in data["prompt"])


@dataclass
class _Node:
    record: RawRecord  # where it was read (a tree's nodes share their record's line)
    role: str
    text: str
    parent: str | None
    rank: int | None
    kept: bool  # neither deleted nor rejected by review
    replies: list[str] = field(default_factory=list)


def rows_of(record: RawRecord) -> list[tuple[str, _Node]]:
    """A record's messages, checked: a row is one; a tree record gives each of its nodes, with its parent's id."""
    data = record_object(record)
    if "prompt" in data and isinstance(data["prompt"], dict):
        found: list[tuple[str, _Node]] = []
        pending = [(data["prompt"], None, "prompt")]
        while pending:
            node, parent, where = pending.pop()
            found.append(_node(record, node, parent, where))
            replies = node.get("replies") or []
            if not isinstance(replies, list):
                raise DataError(record.path, record.where, f"{where}.replies", "expected a list of messages",
                                "write replies as a list of message objects")
            pending += [(reply, found[-1][0], f"{where}.replies[{i}]") for i, reply in enumerate(replies)]
        return found
    return [_node(record, data, data.get("parent_id"), None)]


def _node(record: RawRecord, data, parent: str | None, where: str | None) -> tuple[str, _Node]:
    def field_name(key: str) -> str:
        return f"{where}.{key}" if where else key

    if not isinstance(data, dict):
        raise DataError(record.path, record.where, where, f"expected a message object, got {type(data).__name__}",
                        "write each message as an object with message_id, role and text")
    identity, role, text, rank = data.get("message_id"), data.get("role"), data.get("text"), data.get("rank")
    if not isinstance(identity, str) or not identity:
        raise DataError(record.path, record.where, field_name("message_id"), f"expected an id, got "
                        f"{excerpt(identity)}", "give every message its message_id")
    if parent is not None and not isinstance(parent, str):
        raise DataError(record.path, record.where, field_name("parent_id"), f"expected an id or null, got "
                        f"{excerpt(parent)}", "give the id of the message this one replies to (null for a prompt)")
    if role not in ROLES:
        raise DataError(record.path, record.where, field_name("role"), f"unknown role {excerpt(role)}",
                        "use prompter or assistant")
    if not isinstance(text, str) or not text.strip():
        raise DataError(record.path, record.where, field_name("text"), "expected the message's text",
                        "give the message its text, or remove it")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int | float)):
        raise DataError(record.path, record.where, field_name("rank"), f"expected a number or null, got "
                        f"{excerpt(rank)}", "give the reviewers' rank among siblings (0 the best), or null")
    kept = data.get("deleted") is not True and data.get("review_result") is not False
    return identity, _Node(record, ROLES[role], text, parent, None if rank is None else int(rank), kept)


def conversations(rows: list[tuple[str, _Node]], how: str = "best") -> list[Example]:
    """The trees the rows make, as conversations (`best`, `all`) or preference pairs (`pairs`)."""
    nodes: dict[str, _Node] = {}
    for identity, node in rows:
        if identity in nodes:
            raise DataError(node.record.path, node.record.where, "message_id", f"{identity!r} appears twice",
                            "give each message once")
        nodes[identity] = node
    roots = []
    for identity, node in nodes.items():
        if node.parent is None:
            roots.append(identity)
        elif node.parent not in nodes:
            raise DataError(node.record.path, node.record.where, "parent_id", f"{node.parent!r} is not a message of "
                            "this dataset, so the conversation before this message is missing",
                            "give whole trees (every message of a message_tree_id)")
        else:
            nodes[node.parent].replies.append(identity)
    order = {identity: index for index, identity in enumerate(nodes)}
    for node in nodes.values():  # the best-ranked first; unranked after, in the file's order
        node.replies.sort(key=lambda r: (nodes[r].rank is None, nodes[r].rank or 0, order[r]))
    examples: list[Example] = []
    for root in roots:
        if nodes[root].role != "user":
            node = nodes[root]
            raise DataError(node.record.path, node.record.where, "role", "a tree starts with the prompter's "
                            "message, but this one has no parent and is the assistant's", "give whole trees")
        if nodes[root].kept:
            examples += _paths(nodes, root, how)
    return examples


def _paths(nodes: dict[str, _Node], root: str, how: str) -> list[Example]:
    out, seen = [], set()
    stack = [[root]]
    while stack:
        path = stack.pop()
        replies = [r for r in nodes[path[-1]].replies if nodes[r].kept]
        if how == "pairs":
            ranked = [r for r in replies if nodes[r].role == "assistant" and nodes[r].rank is not None]
            if nodes[path[-1]].role == "user" and len(ranked) > 1:
                prompt = _messages(nodes, path)
                node = nodes[path[-1]]
                out.append(Example(node.record.path, node.record.where,
                                   messages=tuple(prompt + _messages(nodes, [ranked[0]])),
                                   rejected=tuple(prompt + _messages(nodes, [ranked[-1]])), prompt_turns=len(prompt)))
        if not replies:
            if how != "pairs":
                ended = _to_last_answer(path, nodes)
                if ended and tuple(ended) not in seen:
                    seen.add(tuple(ended))
                    out.append(Example(nodes[root].record.path, nodes[root].record.where,
                                       messages=tuple(_messages(nodes, ended))))
            continue
        followed = replies if how in ("all", "pairs") else replies[:1]
        stack += [[*path, r] for r in reversed(followed)]
    return out


def _to_last_answer(path: list[str], nodes: dict[str, _Node]) -> list[str]:
    """The path up to its last assistant message (a prompter's last word has nothing to train on)."""
    while path and nodes[path[-1]].role != "assistant":
        path = path[:-1]
    return path


def _messages(nodes: dict[str, _Node], path: list[str]) -> list[dict[str, str]]:
    return [{"role": nodes[i].role, "content": nodes[i].text} for i in path]
