"""A request body httpx sends without an async generator.

httpx wraps a bytes body in a stream whose `__aiter__` is an async generator, and httpcore's
HTTP/2 sender iterates it without closing it when the connection drops mid-request; trio then
reports a generator garbage-collected unfinished (a ResourceWarning, an error under our test
settings). This body iterates with a plain iterator object instead: nothing to finalize.
"""

from __future__ import annotations

import httpx


class _OneChunk:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


class OneShotBody(httpx.AsyncByteStream):
    """`data` as one chunk; its length is already in the request's content-length."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _OneChunk:
        return _OneChunk(self._data)


def without_generator(request: httpx.Request) -> httpx.Request:
    """`request` (built with a bytes, form or JSON body) with its body as a `OneShotBody`."""
    request.stream = OneShotBody(request.content)
    return request
