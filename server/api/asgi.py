"""ASGI glue between hypercorn and quart-trio: end a connection cleanly after an early answer.

A view may answer before it has read the request body (413 for a Content-Length over the
limit, 401 or 415 on an upload). The unread body still sits in the connection, so the
connection cannot carry another request: the answer says `Connection: close`, and hypercorn
must then really close it.

It did not. hypercorn closes (or recycles) the connection from inside the app's last `send`:
it hands the app `http.disconnect` and then closes the socket. quart-trio's message reader
sees that disconnect and cancels the request's nursery - the very task still inside `send` -
so the socket was never closed and the client's next request waited forever. The last send
is therefore shielded (with a deadline, like every await here) so hypercorn finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)

AsgiApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]


def declares_body(scope: HTTPScope) -> bool:
    """True if the request headers announce a body (a Content-Length > 0 or chunked)."""
    for name, value in scope["headers"]:
        if name.lower() == b"transfer-encoding":
            return True
        if name.lower() == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


def close_after_early_answers(app: AsgiApp, finish_timeout_s: float) -> AsgiApp:
    """Wrap `app`: a response started before the request body was read carries
    `Connection: close`, and the last response message is sent shielded for at most
    `finish_timeout_s`, so the connection is closed (or kept for the next request) for sure.
    """

    async def wrapped(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_read = not declares_body(scope)

        async def tracking_receive() -> ASGIReceiveEvent:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read = True
            return message

        async def closing_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and not body_read:
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                deadline = trio.current_time() + finish_timeout_s
                with trio.CancelScope(deadline=deadline, shield=True):
                    await send(message)
                return
            await send(message)

        await app(scope, tracking_receive, closing_send)

    return wrapped
