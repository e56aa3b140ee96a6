"""A running stand-in per test (real TLS + HTTP/2 on 127.0.0.1) and an HTTP/2 client that
trusts it; see tests/push/helpers.py for signing provider tokens and assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from push.standin import StandIn, running_standin


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with running_standin(tmp_path / "standin") as running:
        yield running


@pytest.fixture
async def client(standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    context = standin.credentials.client_ssl_context()
    async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as http:
        yield http
