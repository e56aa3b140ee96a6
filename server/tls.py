"""TLS for both listeners: one server context built from the certificate and key files,
re-read on SIGHUP without dropping connections.

Both listeners share one `ssl.SSLContext`. A reload first builds a fresh context from the
files (so a missing, unreadable, unparsable or mismatched pair fails there, with the live
context untouched), then loads the same files into the live context: OpenSSL applies a new
chain to handshakes that start afterwards, and connections already up keep theirs.

TLS 1.2 minimum (1.3 preferred by OpenSSL's own negotiation), forward-secret AEAD suites
only for 1.2, ALPN as given by the listener.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from protocol.errors import ObrolError

logger = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD (Mozilla's "intermediate" list); TLS 1.3
# suites are all of that kind and are not set through this string.
CIPHERS_TLS12 = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


API_ALPN = ["h2", "http/1.1"]
GATEWAY_ALPN = ["http/1.1"]


class TlsConfigError(ObrolError):
    """The certificate or key cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    subject: str
    not_after: datetime

    def describe(self) -> str:
        return f"{self.subject}, valid until {self.not_after:%Y-%m-%d %H:%M} UTC"


def certificate_info(cert_file: Path) -> CertificateInfo:
    """The subject and expiry of the first certificate in `cert_file` (PEM)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the TLS certificate {cert_file}: {exc.strerror}"
        ) from None
    except ValueError:
        raise TlsConfigError(f"{cert_file} is not a PEM certificate") from None
    return CertificateInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _first_unreadable(*paths: Path) -> Path | str:
    """Which file the error is about (load_cert_chain's OSError does not say)."""
    for path in paths:
        try:
            with path.open("rb"):
                pass
        except OSError:
            return path
    return " / ".join(str(p) for p in paths)


def _no_passphrase() -> str:
    # Without a callback OpenSSL would ask on the terminal, freezing the event loop.
    raise TlsConfigError("the key is encrypted: give obrol an unencrypted key (mode 0600)")


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    except TlsConfigError as exc:
        raise TlsConfigError(f"TLS key {key_file}: {exc}") from None
    except FileNotFoundError as exc:
        missing = exc.filename or _first_unreadable(cert_file, key_file)
        raise TlsConfigError(f"TLS file not found: {missing}") from None
    except PermissionError as exc:
        denied = exc.filename or _first_unreadable(cert_file, key_file)
        raise TlsConfigError(f"cannot read TLS file {denied}: permission denied") from None
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "key values mismatch" in reason:
            why = "the key does not belong to the certificate"
        else:
            why = f"not a usable certificate and key ({reason})"
        raise TlsConfigError(f"TLS certificate {cert_file} / key {key_file}: {why}") from None
    except OSError as exc:  # a folder where a file should be, and the like
        raise TlsConfigError(
            f"cannot read TLS certificate {cert_file} / key {key_file}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None


def server_context(cert_file: Path, key_file: Path, alpn: list[str]) -> ssl.SSLContext:
    """A server context for the pair; raises TlsConfigError (one line) if unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_alpn_protocols(alpn)
    _load_chain(context, cert_file, key_file)
    return context


class ServerTls:
    """The contexts both listeners hold, and their reload.

    The listeners keep the contexts they were given (`api`, `gateway`); each has an SNI
    callback that hands every new handshake to the current context of its listener. A
    reload builds new contexts from the files and swaps them in only if both are usable:
    nothing is ever loaded into a context in use (OpenSSL would add a certificate of a
    new key type beside the old one instead of replacing it).
    """

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.api = server_context(cert_file, key_file, API_ALPN)
        self.gateway = server_context(cert_file, key_file, GATEWAY_ALPN)
        self._current = {"api": self.api, "gateway": self.gateway}
        self.api.sni_callback = self._switcher("api")
        self.gateway.sni_callback = self._switcher("gateway")
        self.info = certificate_info(cert_file)

    def _switcher(self, listener: str) -> Callable[[Any, str | None, ssl.SSLContext], None]:
        def switch(connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
            current = self._current[listener]
            if current is not context:
                connection.context = current

        return switch

    def reload(self) -> bool:
        """Re-read the files (SIGHUP). On any problem the contexts in use stay as they were
        and a line is logged; returns whether the new pair is in use. Never raises."""
        try:
            api = server_context(self.cert_file, self.key_file, API_ALPN)
            gateway = server_context(self.cert_file, self.key_file, GATEWAY_ALPN)
            info = certificate_info(self.cert_file)
        except TlsConfigError as exc:
            logger.error("TLS reload refused, the previous certificate stays in use: %s", exc)
            return False
        except Exception:  # anything else the files can make a library raise: same answer
            logger.exception("TLS reload refused, the previous certificate stays in use")
            return False
        self._current = {"api": api, "gateway": gateway}
        self.info = info
        logger.info("TLS certificate reloaded: %s", info.describe())
        return True
