"""Requests from many clients answered in batches: one worker thread owns the model and decodes every compatible
request that is waiting as one batch (`evaluation.generate.stream_ids`), streaming each one's text as it comes.

Compatible means the same model name and the same sampling; greedy requests batch freely, a sampled request with a
seed decodes alone (after `torch.manual_seed(seed)`) so that its answer is the one it gets on its own. The worker
waits `window_s` after a request arrives so that requests sent together start together; requests that arrive while
a batch decodes wait for the next one."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from tuneforge.evaluation.generate import stream_ids
from tuneforge.runs.serving import Served


@dataclass
class Request:
    model: str
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None  # each new piece of the answer (called from the worker thread)
    cancelled: bool = False  # the client went away: the row finishes at its next token
    result: Future = field(default_factory=Future)  # -> Answer

    def batch_key(self) -> tuple:
        if self.temperature <= 0:
            return self.model, 0.0, 1.0, None
        return self.model, self.temperature, self.top_p, (self.seed, id(self)) if self.seed is not None else None


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop token or string) or "length"


class _Row:
    """One request's decoding: its tokens so far, the text shown, and why it ended."""

    def __init__(self, request: Request, tokenizer, stop_ids: set[int]):
        self.request, self.tokenizer, self.stop_ids = request, tokenizer, stop_ids
        self.tokens: list[int] = []  # the answer's (a stop token not among them)
        self.generated = 0
        self.sent = ""
        self.finish = "length"

    def add(self, token: int) -> bool:
        self.generated += 1
        if token in self.stop_ids:
            self.finish = "stop"
            return True
        self.tokens.append(token)
        if self.request.on_text is None and not self.request.stop:  # nothing to show or search: decode at the end
            return self.request.cancelled
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        cut = min((i for i in (text.find(s) for s in self.request.stop if s) if i >= 0), default=None)
        if cut is not None:
            self.finish = "stop"
            self._show(text[:cut].rstrip())
            return True
        if not text.endswith("\ufffd"):  # a character whose bytes are not all decoded yet waits
            self._show(text.rstrip())  # trailing spaces wait too: the answer is stripped, as `chat`'s
        return self.request.cancelled

    def _show(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            if self.request.on_text is not None:
                self.request.on_text(delta)

    def answer(self) -> Answer:
        final = self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
        if self.finish == "stop" and self.request.stop:
            final = self.sent
        self._show(final)
        return Answer(final, len(self.request.prompt), self.generated, self.finish)


class Batcher:
    def __init__(self, served: Served, *, max_batch: int = 8, window_s: float = 0.01):
        self.served, self.max_batch, self.window_s = served, max_batch, window_s
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._waiting: list[Request] = []
        self._thread = threading.Thread(target=self._work, name="tuneforge-batcher", daemon=True)
        self._thread.start()
        self.batches: list[int] = []  # the size of each batch decoded (for tests and the benchmark)

    def submit(self, request: Request) -> Request:
        self._queue.put(request)
        return request

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            if not self._waiting:
                first = self._queue.get()
                if first is None:
                    return
                self._waiting.append(first)
                time.sleep(self.window_s)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._waiting.append(item)
            key = self._waiting[0].batch_key()
            batch = [r for r in self._waiting if r.batch_key() == key][: self.max_batch]
            self._waiting = [r for r in self._waiting if all(r is not b for b in batch)]
            self._decode(batch)

    def _decode(self, batch: list[Request]) -> None:
        first, served = batch[0], self.served
        stop_ids = served.stop_ids
        rows = [_Row(r, served.tokenizer, stop_ids) for r in batch]
        try:
            with torch.no_grad(), served.autocast():
                served.select(first.model)
                if first.seed is not None and first.temperature > 0:
                    torch.manual_seed(first.seed)
                stream_ids(served.model, served.tokenizer, [r.prompt for r in batch],
                           limits=[r.max_tokens for r in batch], stop_ids=stop_ids,
                           on_token=lambda row, token: rows[row].add(token), temperature=first.temperature,
                           top_p=first.top_p)
            self.batches.append(len(batch))
            for row in rows:
                row.request.result.set_result(row.answer())
        except Exception as exc:  # the server answers each request with the failure; the worker goes on
            for request in batch:
                if not request.result.done():
                    request.result.set_exception(exc)
