"""The TLS client context each push provider connects with."""

from __future__ import annotations

import ssl
from pathlib import Path

from push.providers import PushConfigError


def client_context(ca_file: Path | None, *, alpn: list[str], what: str) -> ssl.SSLContext:
    """A verifying client context: trusting only `ca_file` when given, else the system CAs.

    `alpn` is offered as is. Raises `PushConfigError` (naming `what` and the file) when the
    CA file cannot be read or holds no usable certificate.
    """
    if ca_file is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except FileNotFoundError:
            raise PushConfigError(f"{what}: CA file {ca_file} does not exist") from None
        except (OSError, ssl.SSLError, ValueError):
            raise PushConfigError(
                f"{what}: CA file {ca_file} holds no usable PEM certificate"
            ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    return context
