"""`tuneforge feedback serve`: a local web page where reviewers judge pairs of responses.

Each prompt becomes an item with two responses: one from each model when two are given, otherwise two
samples of the one model. Items are sampled ahead in a background thread (one model call at a time) and
stored before any page sees them, so a restarted server shows the same responses and never samples a prompt
twice. The page shows the two responses in random order; what is saved names the response, not the side.

The page and its JSON endpoints are served by `web.feedback` on the web stack every tuneforge server shares
(Starlette + uvicorn behind `web.guard`). What it guards against (RELIABILITY.md, promise 14):
- writing as someone else: a reviewer's first visit claims the name and the server issues a secret token,
  kept by that browser; every later request carries it (`Authorization: Bearer`), and the name a judgement
  is saved under is the token's, never one the request names. `--reviewers FILE` closes the list instead:
  only the names in the file, each with the token written next to it;
- other web pages: a browser page from another origin, or a DNS name rebound to this machine, is refused by
  the Origin and Host checks; writes must be `application/json`, which no cross-origin form or no-cors fetch
  can send without a preflight this server never answers;
- malformed or huge bodies: each field is checked (type, range, length) and refused with 400 and the reason;
  bodies over 64 KiB are refused before they are read; no request can drop the connection with a traceback.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from tuneforge.data.formats import prompt_of
from tuneforge.data.sources import read_records
from tuneforge.errors import ConfigError, DataError
from tuneforge.feedback.store import FeedbackStore, Judgement

Sample = Callable[[list[dict]], tuple[tuple[str, str], tuple[str, str]]]  # prompt -> (responses, model names)


def load_prompts(path: str) -> list[list[dict]]:
    prompts = [prompt_of(record) for record in read_records(path)]
    if not prompts:
        raise DataError(path, None, None, "has no prompts", "give a JSONL file with one {\"prompt\": ...} per line")
    return prompts


MAX_BODY = 64 * 1024  # bytes of a request body; a judgement with a long correction is a few KiB
MAX_CORRECTION = 16_000  # characters of a written answer
MAX_NAME = 64
JUDGE_KEYS = {"item_id", "choice", "shown_first", "ratings", "correction", "reviewer"}


class Refused(Exception):
    """A request the server answers with `status` and a reason, never a traceback."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status


def load_reviewers(path: str) -> dict[str, str]:
    """A closed reviewer list: one `name token` per line (# comments allowed); tokens of 16 characters or more."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--reviewers {path}: cannot read it ({exc})\n  fix: give a UTF-8 text file of "
                          "`name token` lines") from None
    reviewers: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16 or len(parts[0]) > MAX_NAME or parts[0] in reviewers:
            raise ConfigError(f"--reviewers {path}:{number}: expected `name token` with a unique name of at most "
                              f"{MAX_NAME} characters and a token of 16 or more\n  fix: e.g. `ann "
                              f"{secrets.token_urlsafe(18)}`")
        reviewers[parts[0]] = parts[1]
    if not reviewers:
        raise ConfigError(f"--reviewers {path}: lists nobody\n  fix: add `name token` lines")
    return reviewers


@dataclass
class FeedbackApp:
    store: FeedbackStore
    prompts: list[list[dict]]
    sample: Sample
    reviewers: dict[str, str] | None = None  # a closed list of names and their tokens; None: names are claimed
    _model_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def ensure_item(self, prompt: list[dict]) -> bool:
        """Sample and store this prompt's item unless it exists; True when it was made now."""
        with self._model_lock:  # one model call at a time; whoever waited finds the item made
            if self.store.has_item(prompt):
                return False
            responses, models = self.sample(prompt)
            self.store.add_item(prompt, responses, models)
            return True

    def fill(self) -> None:
        """Sample every prompt's item ahead of the reviewers (the background thread)."""
        for prompt in self.prompts:
            if self._stop.is_set():
                return
            self.ensure_item(prompt)

    def stop(self) -> None:
        """`fill` stops before its next prompt (the server is shutting down)."""
        self._stop.set()

    def join(self, body: dict) -> dict:
        """A reviewer starts: a new name is claimed and gets a token; a taken one needs its token."""
        _only_keys(body, {"name", "token"})
        name = _text(body.get("name"), "name", MAX_NAME, required=True).strip()
        token = _text(body.get("token"), "token", 200)
        if self.reviewers is not None:
            if name not in self.reviewers or not token or not secrets.compare_digest(self.reviewers[name], token):
                raise Refused(HTTPStatus.FORBIDDEN, "this name and token are not on the server's reviewer list")
            self.store.claim_reviewer(name, token)
            return {"name": name, "token": token}
        token = token or secrets.token_urlsafe(24)
        if not self.store.claim_reviewer(name, token):
            raise Refused(HTTPStatus.FORBIDDEN, f"the name {name!r} is taken by another reviewer; continue in the "
                                                "browser where you started, or choose another name")
        return {"name": name, "token": token}

    def next_for(self, reviewer: str) -> dict:
        item = self.store.next_item_for(reviewer)
        while item is None:
            missing = next((p for p in self.prompts if not self.store.has_item(p)), None)
            if missing is None:
                return {"done": True, "judged": self.store.count_for(reviewer), "total": len(self.prompts)}
            self.ensure_item(missing)
            item = self.store.next_item_for(reviewer)
        order = [1, 2]
        random.shuffle(order)
        return {"done": False, "judged": self.store.count_for(reviewer), "total": len(self.prompts),
                "item": {"id": item.id, "prompt": item.prompt,
                         "left": {"slot": order[0], "text": item.responses[order[0] - 1]},
                         "right": {"slot": order[1], "text": item.responses[order[1] - 1]}}}

    def judge(self, reviewer: str, body: dict) -> dict:
        """Save the authenticated reviewer's judgement; a body naming another reviewer is refused."""
        _only_keys(body, JUDGE_KEYS)
        if "reviewer" in body and body["reviewer"] != reviewer:
            raise Refused(HTTPStatus.FORBIDDEN, "a judgement is saved under your own name only")
        ratings = body.get("ratings") or {}
        if not isinstance(ratings, dict) or set(ratings) - {"1", "2"}:
            raise Refused(HTTPStatus.BAD_REQUEST, "ratings must be an object with keys \"1\" and \"2\"")
        judgement = Judgement(
            item_id=_integer(body.get("item_id"), "item_id", range(1, 2**62)), reviewer=reviewer,
            choice=_choice(body.get("choice")), shown_first=_optional_integer(body.get("shown_first"), "shown_first",
                                                                              range(1, 3)),
            ratings=(_optional_integer(ratings.get("1"), "ratings.1", range(1, 6)),
                     _optional_integer(ratings.get("2"), "ratings.2", range(1, 6))),
            correction=_text(body.get("correction"), "correction", MAX_CORRECTION))
        try:
            self.store.judge(judgement)
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, str(exc)) from None
        return {"saved": True, "judged": self.store.count_for(reviewer)}


def _only_keys(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Refused(HTTPStatus.BAD_REQUEST, f"unknown fields {unknown}; allowed: {sorted(allowed)}")


def _choice(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or str(value) not in ("1", "2", "tie") or not isinstance(value, int | str):
        raise Refused(HTTPStatus.BAD_REQUEST, f"choice must be 1, 2, \"tie\" or null, not {_shown(value)}")
    return str(value)


def _integer(value, name: str, allowed: range) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise Refused(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number from {allowed.start} to "
                                              f"{allowed.stop - 1}, not {_shown(value)}")
    return value


def _optional_integer(value, name: str, allowed: range) -> int | None:
    return None if value is None or value == "" else _integer(value, name, allowed)


def _text(value, name: str, limit: int, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise Refused(HTTPStatus.BAD_REQUEST, f"{name} must be {'non-empty ' if required else ''}text, "
                                              f"not {_shown(value)}")
    if len(value) > limit:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name} is {len(value)} characters; the limit is {limit}")
    return value


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def model_sampler(responders: Sequence, *, max_new_tokens: int, temperature: float, top_p: float) -> Sample:
    """Two responses per prompt: one from each of two responders, or two samples of one (which then needs
    temperature > 0, or both would be the same)."""
    pair = (responders[0], responders[-1])

    def sample(prompt: list[dict]) -> tuple[tuple[str, str], tuple[str, str]]:
        if pair[0] is pair[1]:
            texts = pair[0].reply([prompt, prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p)
        else:
            texts = [r.reply([prompt], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)[0]
                     for r in pair]
        return (texts[0], texts[1]), (pair[0].name, pair[1].name)

    return sample
