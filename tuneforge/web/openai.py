"""`tuneforge serve`: finished runs behind OpenAI's HTTP API, on Starlette and uvicorn.

`GET /v1/models`, `POST /v1/chat/completions` (the run's chat template, as `tuneforge chat`) and
`POST /v1/completions` (raw text), each streamed as server-sent events when asked; every run (or each adapter of a
per-task multitask run) is a model name on one shared base, as vLLM serves LoRA adapters. Concurrent requests are
decoded together (`runs.batcher`). A request is validated field by field and refused in OpenAI's error shape with the
field named; a field this server cannot honour (n > 1, tools, logprobs, penalties) is refused, never ignored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.runs.batcher import Answer, Batcher, Request
from tuneforge.runs.serving import Served
from tuneforge.web.base import Server, json_body, listen, parsed, starlette_app
from tuneforge.web.guard import Guard, Refused, error_body, is_loopback

MAX_BODY = 1024 * 1024  # bytes: a long conversation is tens of KiB


class _Loose(BaseModel):
    """Fields clients add that change nothing here (user, metadata, stream_options ...) are accepted."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Loose):
    type: Literal["text"]
    text: str


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Loose):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream_options: dict[str, bool] | None = None

    def stops(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=16)]
    max_tokens: int | None = Field(16, ge=1)


UNSUPPORTED = {"tools": None, "functions": None, "tool_choice": None, "logprobs": False, "top_logprobs": None,
               "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0, "echo": False, "best_of": 1,
               "suffix": None}  # field: the value that means "not used"


def openai_app(served: Served, *, bound: str = "127.0.0.1", port: int = 8000, token: str | None = None,
               max_tokens: int = 512, max_batch: int = 8):
    """The ASGI app (Starlette, behind `web.guard.Guard`): `max_tokens` is the most a request may ask for and what
    one that names none gets (a completion's default is OpenAI's 16)."""
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    batcher = Batcher(served, max_batch=max_batch)
    created = int(time.time())
    context = getattr(getattr(served.model, "config", None), "max_position_embeddings", None)

    def models(_: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [_card(n, created) for n in served.names]})

    def model(request: HttpRequest) -> Response:
        return JSONResponse(_card(_model(request.path_params["name"]), created))

    async def chat(request: HttpRequest) -> Response:
        body = _parse(ChatRequest, await json_body(request))
        limit = body.max_completion_tokens or body.max_tokens or max_tokens
        prompt = served.prompt_ids(_model(body.model), [{"role": "system" if m.role == "developer" else m.role,
                                                         "content": m.text()} for m in body.messages])
        return await _answer(body, [prompt], limit, "chat.completion")

    async def completions(request: HttpRequest) -> Response:
        body = _parse(CompletionRequest, await json_body(request))
        _model(body.model)
        prompts = [served.text_ids(p) for p in ([body.prompt] if isinstance(body.prompt, str) else body.prompt)]
        return await _answer(body, prompts, body.max_tokens or max_tokens, "text_completion")

    def _model(name: str) -> str:
        if name not in served.names:
            raise Refused(HTTPStatus.NOT_FOUND, f"no model '{name[:100]}'; served: {', '.join(served.names)}",
                          param="model")
        return name

    async def _answer(body: _Sampling, prompts: list[list[int]], limit: int, kind: str) -> Response:
        if limit > max_tokens:
            raise Refused(HTTPStatus.BAD_REQUEST, f"max_tokens {limit} is over this server's limit {max_tokens} "
                          "(tuneforge serve --max-tokens)", param="max_tokens")
        for prompt in prompts:
            if context is not None and len(prompt) + limit > context:
                raise Refused(HTTPStatus.BAD_REQUEST, f"the prompt ({len(prompt)} tokens) and max_tokens ({limit}) "
                              f"exceed the model's context of {context} tokens", param="messages")
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        requests = [batcher.submit(Request(body.model, prompt, limit, body.temperature, body.top_p, body.seed,
                                           body.stops(), on_text=_feeder(loop, pieces, index) if body.stream
                                           else None)) for index, prompt in enumerate(prompts)]
        ident = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + secrets.token_hex(12)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(kind, ident, body.model, requests, pieces, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        answers = [await asyncio.wrap_future(r.result) for r in requests]
        return JSONResponse(_whole(kind, ident, body.model, answers))

    routes = [Route("/v1/models", models), Route("/v1/models/{name:path}", model),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        batcher.close()

    app = starlette_app(routes, lifespan, "serve")
    app.state.batcher = batcher
    return Guard(app, bound=bound, port=port, token=token, max_body=MAX_BODY)


def _card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "tuneforge"}


def _parse(schema: type[_Sampling], body: dict) -> _Sampling:
    for field, unused in UNSUPPORTED.items():
        if body.get(field, unused) not in (unused, None):
            raise Refused(HTTPStatus.BAD_REQUEST, f"{field} is not supported by tuneforge serve", param=field)
    return parsed(schema, body)


def _feeder(loop, pieces: asyncio.Queue, index: int):
    return lambda text: loop.call_soon_threadsafe(pieces.put_nowait, (index, text))


def _usage(answers: list[Answer]) -> dict:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _whole(kind: str, ident: str, model: str, answers: list[Answer]) -> dict:
    if kind == "chat.completion":
        choices = [{"index": 0, "message": {"role": "assistant", "content": answers[0].text}, "logprobs": None,
                    "finish_reason": answers[0].finish_reason}]
    else:
        choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}
                   for i, a in enumerate(answers)]
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": choices,
            "usage": _usage(answers)}


async def _stream(kind: str, ident: str, model: str, requests: list[Request], pieces: asyncio.Queue,
                  include_usage: bool) -> AsyncIterator[str]:
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
    created = int(time.time())

    def event(choices: list[dict], **extra) -> str:
        return "data: " + json.dumps({"id": ident, "object": chunk_kind, "created": created, "model": model,
                                      "choices": choices, **extra}) + "\n\n"

    def choice(index: int, text: str | None, finish: str | None, role: bool = False) -> dict:
        if kind != "chat.completion":
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    try:
        if kind == "chat.completion":
            yield event([choice(0, "", None, role=True)])
        waiting = {asyncio.wrap_future(r.result): i for i, r in enumerate(requests)}
        while waiting:
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait([getter, *waiting], return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                index, text = getter.result()
                yield event([choice(index, text, None)])
                continue
            getter.cancel()
            for finished in done:
                index = waiting.pop(finished)
                while not pieces.empty():  # what the worker sent before it finished this request
                    i, text = pieces.get_nowait()
                    yield event([choice(i, text, None)])
                answer = finished.result()
                yield event([choice(index, None, answer.finish_reason)])
        if include_usage:
            yield event([], usage=_usage([r.result.result() for r in requests]))
        yield "data: [DONE]\n\n"
    except Exception as exc:  # the stream has started: the failure is its last event
        yield "data: " + error_body(500, f"generation failed: {exc}", "server_error").decode() + "\n\n"
    finally:
        for request in requests:
            request.cancelled = True  # a client that went away stops costing decode steps


def start(served: Served, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_tokens: int = 512, max_batch: int = 8, background: bool = False, announce: bool = False) -> Server:
    """Listen on host:port (0: a free port) and answer until stopped (Ctrl-C in the foreground; `stop()` in the
    background, where this returns once the server accepts connections)."""
    def app(actual: int):
        return openai_app(served, bound=host, port=actual, token=token, max_tokens=max_tokens, max_batch=max_batch)

    def said(url: str) -> str:
        if not is_loopback(host):
            print(f"warning: listening on {host}: anyone who reaches this machine and has the API key can use the "
                  "models", file=sys.stderr)
        return f"serving {', '.join(served.names)} at {url} (OpenAI API; Ctrl-C stops)"

    return listen(app, host, port, path="/v1", background=background, announce=said if announce else None)


