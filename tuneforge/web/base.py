"""What every tuneforge web server shares besides its guard: an app built with the same refusals (OpenAI's error
shape for every 4xx and 5xx, a located user error as 400, no traceback to the client), JSON bodies read strictly,
and listening with uvicorn on a socket bound here (a taken port is a located error)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import threading
import time
from http import HTTPStatus

from pydantic import BaseModel, ValidationError

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.web.guard import Refused, error_body, url_host


def starlette_app(routes: list, lifespan, name: str):
    """A Starlette app whose every failure is answered in the error shape: refusals with their status, a
    `TuneforgeError` (a located user error from below: a config, a prompt) 400 with the config key it names as
    `param`, an
    unknown path 404, a wrong method 405, anything else 500 with its cause printed on the server's console only."""
    from starlette.applications import Starlette
    from starlette.responses import Response

    async def refused(_, exc: Refused):
        return Response(error_body(exc.status, str(exc), exc.kind, exc.param), status_code=exc.status,
                        media_type="application/json")

    async def not_found(request, _):
        return await refused(request, Refused(HTTPStatus.NOT_FOUND, f"no endpoint {request.url.path[:100]}"))

    async def not_allowed(request, _):
        return await refused(request, Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on "
                                              f"{request.url.path[:100]}"))

    async def user_error(request, exc: TuneforgeError):
        key = re.search(r"'([A-Za-z_]\w*(?:\.\w+)+)'", str(exc)) or re.search(r"config key '(\w+)'", str(exc))
        return await refused(request, Refused(HTTPStatus.BAD_REQUEST, str(exc), param=key.group(1) if key else None))

    async def failed(request, exc: Exception):
        print(f"tuneforge {name}: {type(exc).__name__}: {exc} on {request.method} {request.url.path[:200]}",
              file=sys.stderr)
        return await refused(request, Refused(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; the server's "
                                              "console says more", "server_error"))

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        Refused: refused, TuneforgeError: user_error, 404: not_found, 405: not_allowed, Exception: failed})


async def json_body(request) -> dict:
    """The request's body: a JSON object sent as application/json (which no cross-origin form or no-cors fetch can
    send without a preflight that these servers never answer), or a refusal saying what is wrong."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
    try:
        body = json.loads((await request.body()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(HTTPStatus.BAD_REQUEST, "the body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise Refused(HTTPStatus.BAD_REQUEST, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def parsed(schema: type[BaseModel], body: dict):
    """`body` validated by `schema`; the first problem refused with its field named."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refused(HTTPStatus.BAD_REQUEST, f"{where}: {first['msg']}", param=where) from None


@dataclasses.dataclass
class Server:
    """A running server of ours: its base URL (what the `openai` client's base_url takes) and how to stop it."""

    url: str
    port: int
    server: object  # uvicorn.Server
    thread: threading.Thread | None = None
    token: str | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)



def listen(app, host: str, port: int, *, path: str = "/", fragment: str = "", background: bool = False,
           announce=None) -> Server:
    """Serve `app(port)` (the ASGI app for the port actually bound: 0 picks a free one) with uvicorn on a socket
    bound here, so that a taken port is a located error, not a traceback; `announce(url)` is called once it
    listens, and what it returns printed."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})\n  fix: choose "
                          "another --port (0 picks a free one)") from None
    sock.listen(2048)  # connections wait in the backlog from now on, even before uvicorn accepts them
    actual = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app(actual), log_level="warning", timeout_graceful_shutdown=5))
    handle = Server(f"http://{url_host(host)}:{actual}{path}{fragment}", actual, server)
    if announce is not None and (line := announce(handle.url)):
        print(line, flush=True)
    if not background:
        server.run(sockets=[sock])
        return handle
    handle.thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tuneforge-web",
                                     daemon=True)
    handle.thread.start()
    while not server.started and handle.thread.is_alive():
        time.sleep(0.02)
    return handle
