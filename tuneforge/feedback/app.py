"""`tuneforge feedback serve`: a local web page where reviewers judge pairs of responses.

Each prompt becomes an item with two responses: one from each model when two are given, otherwise two
samples of the one model. Items are sampled ahead in a background thread (one model call at a time) and
stored before any page sees them, so a restarted server shows the same responses and never samples a prompt
twice. The page shows the two responses in random order; what is saved names the response, not the side.

The server is the standard library's threaded HTTP server: a page and three JSON endpoints, for a handful of
reviewers on a local network, needs nothing more.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from tuneforge.data.formats import prompt_of
from tuneforge.data.sources import read_records
from tuneforge.errors import DataError
from tuneforge.feedback.store import FeedbackStore, Judgement, stats

Sample = Callable[[list[dict]], tuple[tuple[str, str], tuple[str, str]]]  # prompt -> (responses, model names)


def load_prompts(path: str) -> list[list[dict]]:
    prompts = [prompt_of(record) for record in read_records(path)]
    if not prompts:
        raise DataError(path, None, None, "has no prompts", "give a JSONL file with one {\"prompt\": ...} per line")
    return prompts


@dataclass
class FeedbackApp:
    store: FeedbackStore
    prompts: list[list[dict]]
    sample: Sample
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

    def judge(self, body: dict) -> dict:
        ratings = body.get("ratings") or {}
        judgement = Judgement(
            item_id=int(body["item_id"]), reviewer=str(body.get("reviewer", "")),
            choice=_choice(body.get("choice")), shown_first=_slot(body.get("shown_first")),
            ratings=(_rating(ratings.get("1")), _rating(ratings.get("2"))), correction=body.get("correction"))
        self.store.judge(judgement)
        return {"saved": True, "judged": self.store.count_for(judgement.reviewer)}

    def serve(self, host: str, port: int, *, on_ready: Callable[[str], None] = print) -> None:
        filler = threading.Thread(target=self.fill, name="feedback-sampler", daemon=True)
        filler.start()
        server = ThreadingHTTPServer((host, port), _handler(self))
        server.daemon_threads = True
        on_ready(f"http://{host}:{server.server_address[1]}/")
        try:
            server.serve_forever()
        finally:
            self._stop.set()
            server.server_close()


def _choice(value) -> str | None:
    if value in (None, ""):
        return None
    if str(value) not in ("1", "2", "tie"):
        raise ValueError(f"choice must be 1, 2 or tie, not {value!r}")
    return str(value)


def _slot(value) -> int | None:
    return None if value in (None, "") else int(value)


def _rating(value) -> int | None:
    if value in (None, ""):
        return None
    if int(value) not in range(1, 6):
        raise ValueError(f"a rating is 1 to 5, not {value!r}")
    return int(value)


def _handler(app: FeedbackApp) -> type[BaseHTTPRequestHandler]:
    page = resources.files("tuneforge.feedback").joinpath("page.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/":
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif url.path == "/api/next":
                reviewer = parse_qs(url.query).get("reviewer", [""])[0].strip()
                if not reviewer:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": "give your name first"})
                else:
                    self._json(HTTPStatus.OK, app.next_for(reviewer))
            elif url.path == "/api/stats":
                self._json(HTTPStatus.OK, stats(app.store))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/api/judge":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._json(HTTPStatus.OK, app.judge(body))
            except (ValueError, KeyError, TypeError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

        def _json(self, status: HTTPStatus, data: dict) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: the console shows the URL only
            pass

    return Handler


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
