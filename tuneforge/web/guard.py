"""What every tuneforge web server checks before a request reaches a route (RELIABILITY.md, promise 14), as ASGI
middleware on Starlette:

- the Host header names this server (loopback, the bound address, or, beyond loopback, an IP address or this
  machine's name): a DNS name rebound to this machine by another page is refused (421);
- a browser page of another origin is refused (403): no CORS is offered, so no other page reads or writes here;
- a body over the limit is refused before it is read whole (413);
- with a token, a request without `Authorization: Bearer TOKEN` is refused (401), compared in constant time
  (except the pages a browser opens first and, where the server says so, reads).

Refusals are JSON in OpenAI's error shape, `{"error": {"message", "type", "code"}}`, which the `openai` client
reads into its exceptions."""

from __future__ import annotations

import hmac
import ipaddress
import json
from http import HTTPStatus

__all__ = ["Guard", "Refused", "allowed_host", "error_body", "is_loopback", "url_host"]


class Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def error_body(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


class Guard:
    def __init__(self, app, *, bound: str, port: int, token: str | None, max_body: int, open_paths: tuple = (),
                 open_reads: bool = False, credential: str = "a valid API key", headers: dict | None = None):
        self.app, self.bound, self.port, self.token, self.max_body = app, bound, port, token, max_body
        self.open_paths = open_paths  # paths a browser loads without the token (the page that then asks for it)
        self.open_reads = open_reads  # GET needs no token (a loopback UI: only writes do)
        self.credential = credential  # what a refused request is told to send
        self.headers = [(k.lower().encode(), v.encode()) for k, v in
                        {"X-Content-Type-Options": "nosniff", **(headers or {})}.items()]  # on every response

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check(scope, headers)
        except Refused as refused:
            await self._refuse(send, refused)
            return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {self.max_body} bytes")
            return message

        started = False

        async def watched(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                given = list(message.get("headers", []))
                names = {name.lower() for name, _ in given}
                message = {**message, "headers": given + [h for h in self.headers if h[0] not in names]}
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Refused as refused:  # the body grew past the limit while a route read it
            if not started:
                await self._refuse(send, refused)

    def _check(self, scope, headers: dict[str, str]) -> None:
        host = headers.get("host", "")
        if not allowed_host(host, self.bound, self.port):
            raise Refused(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only its own address")
        origin = headers.get("origin")
        if origin is not None and origin != f"http://{host}":
            raise Refused(HTTPStatus.FORBIDDEN, "requests from other web pages are refused")
        length = headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > self.max_body):
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {length[:20]} bytes; the limit is "
                                                               f"{self.max_body}")
        free = scope["path"] in self.open_paths or (self.open_reads and scope["method"] in ("GET", "HEAD"))
        if self.token is not None and not free:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                raise Refused(HTTPStatus.UNAUTHORIZED, f"{self.credential} is required (Authorization: Bearer ...)",
                              "authentication_error")


    async def _refuse(self, send, refused: Refused) -> None:
        body = error_body(refused.status, str(refused), refused.kind)
        await send({"type": "http.response.start", "status": int(refused.status), "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *self.headers]})
        await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def allowed_host(header: str, bound: str, port: int) -> bool:
    """Whether a request's Host header names this server: loopback, the bound address, or, when it listens
    beyond loopback, any IP address or this machine's own names. Any other DNS name reaching it is a name
    rebound to this machine by someone else's page, and is refused."""
    import socket

    host, _, given_port = header.rpartition(":") if not header.endswith("]") else (header, "", "")
    if (given_port or "80") != str(port):
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", bound.strip("[]").lower()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not is_loopback(bound) and host in {socket.gethostname().lower(), socket.getfqdn().lower()}
    return address.is_loopback or not is_loopback(bound)
