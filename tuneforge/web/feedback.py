"""`tuneforge feedback serve`'s page and JSON endpoints on the web stack every tuneforge server shares (Starlette +
uvicorn behind `web.guard`: Host, Origin and body limits; errors in one shape). What a reviewer may do is
`feedback.app.FeedbackApp`'s: this module only carries requests to it.

Reviewers are not the server's token holders: each has a token of their own, issued when they claim their name (or
listed in `--reviewers FILE`) and checked against the store on every request that reads or writes their
judgements, so the guard itself asks for no token."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources

from tuneforge.feedback.app import MAX_BODY, FeedbackApp
from tuneforge.feedback.app import Refused as Declined
from tuneforge.feedback.store import stats
from tuneforge.web.base import Server, json_body, listen, starlette_app
from tuneforge.web.guard import Guard, Refused, is_loopback

# on every answer: nothing cached, and no other page may frame this one
HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": "frame-ancestors 'none'"}


def feedback_asgi(feedback: FeedbackApp, *, bound: str = "127.0.0.1", port: int = 8765):
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("tuneforge.feedback").joinpath("page.html").read_text(encoding="utf-8")

    async def call(method: Callable, *args):
        """The app's answer (sampling a missing item can take a model call: off the event loop), or its refusal
        in the shared error shape."""
        try:
            return JSONResponse(await run_in_threadpool(method, *args))
        except Declined as exc:
            raise Refused(exc.status, str(exc)) from None

    def reviewer(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        name = feedback.store.reviewer_of(token) if scheme == "Bearer" and token else None
        if name is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "start with your name first (no valid reviewer token)",
                          "authentication_error")
        return name

    async def index(_: Request) -> Response:
        return HTMLResponse(page)

    async def config(_: Request) -> Response:
        return JSONResponse({"closed": feedback.reviewers is not None})

    async def next_item(request: Request) -> Response:
        return await call(feedback.next_for, reviewer(request))

    async def statistics(request: Request) -> Response:
        reviewer(request)
        return await call(stats, feedback.store)

    async def join(request: Request) -> Response:
        return await call(feedback.join, await json_body(request))

    async def judge(request: Request) -> Response:
        name = reviewer(request)
        return await call(feedback.judge, name, await json_body(request))

    routes = [Route("/", index), Route("/api/config", config), Route("/api/next", next_item),
              Route("/api/stats", statistics), Route("/api/join", join, methods=["POST"]),
              Route("/api/judge", judge, methods=["POST"])]
    app = starlette_app(routes, None, "feedback")
    return Guard(app, bound=bound, port=port, token=None, max_body=MAX_BODY, headers=HEADERS)


def serve_feedback(feedback: FeedbackApp, host: str, port: int, *, on_ready: Callable[[str], None] = print,
                   background: bool = False) -> Server:
    """Sample every prompt's item ahead in a background thread and answer reviewers until stopped (Ctrl-C or
    SIGTERM in the foreground; `stop()` in the background)."""
    filler = threading.Thread(target=feedback.fill, name="feedback-sampler", daemon=True)
    filler.start()
    if exposure_warning(host):
        print(exposure_warning(host), file=sys.stderr)
    try:
        return listen(lambda actual: feedback_asgi(feedback, bound=host, port=actual), host, port,
                      background=background, announce=lambda url: on_ready(url) or "")
    finally:
        if not background:
            feedback.stop()


def exposure_warning(host: str) -> str | None:
    """What to tell the person starting the server when it listens beyond this machine's loopback."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}, so anyone who can reach this machine can open the page; names are "
            "protected by their tokens, but consider --reviewers FILE for a closed list")
