"""The stand-ins' key material, made at test time and kept in one private folder.

`StandInCredentials.create` makes, in a folder of mode 0700 with every file 0600:

- a CA (`ca.pem`) and a server certificate for 127.0.0.1, localhost and ::1
  (`server.pem`, `server-key.pem`), issued with trustme;
- an APNs signing key as Apple hands it out: EC P-256, PKCS#8 PEM, named
  `AuthKey_<key id>.p8`, with a 10-character key id and team id;
- an FCM service-account JSON file in Google's exact format, whose `token_uri` points at
  the stand-in's OAuth2 token endpoint;
- `standin.json`, the ids and names that let `load` find the rest again.

The CA's private key is not kept: the server certificate is issued once and reused.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEFAULT_APNS_TOPIC = "org.obrol.app"
DEFAULT_FCM_PROJECT = "obrol-standin"
# Until the stand-in is bound and rewrites it, the token URI points nowhere (.invalid never
# resolves), so a client that reads the file too early fails instead of calling Google.
UNBOUND_TOKEN_URI = "https://standin.invalid/token"

_MANIFEST = "standin.json"
_CA = "ca.pem"
_SERVER_CERT = "server.pem"
_SERVER_KEY = "server-key.pem"
_SERVICE_ACCOUNT = "fcm-service-account.json"
_ID_ALPHABET = string.ascii_uppercase + string.digits


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (also when the file existed)."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    partial.replace(path)


def _apple_id() -> str:
    """Ten upper-case letters and digits, like Apple's key ids and team ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def _service_account(project: str, token_uri: str) -> dict[str, str]:
    """A service-account key file's content, field for field as the Google Cloud console
    writes it; only `token_uri` points elsewhere."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    email = f"firebase-adminsdk-{secrets.token_hex(3)[:5]}@{project}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),  # 21 digits
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": (
            f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email, safe='')}"
        ),
        "universe_domain": "googleapis.com",
    }


@dataclass(frozen=True)
class StandInCredentials:
    """Where the stand-ins' key material lies, and the ids that go with it."""

    directory: Path
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    apns_key_file: Path
    apns_key_id: str
    apns_team_id: str
    apns_topic: str
    fcm_service_account_file: Path
    fcm_project: str

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        base_url: str | None = None,
        apns_topic: str = DEFAULT_APNS_TOPIC,
        fcm_project: str = DEFAULT_FCM_PROJECT,
    ) -> StandInCredentials:
        """Make fresh credentials in `directory` (created 0700 if absent; its previous
        stand-in files are replaced). With `base_url` ("https://127.0.0.1:8443") the service
        account's token_uri is `<base_url>/token`; without it, `point_token_uri_at` must be
        called once the stand-in's port is known."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
        _write_private(directory / _CA, ca.cert_pem.bytes())
        _write_private(directory / _SERVER_CERT, b"".join(p.bytes() for p in leaf.cert_chain_pems))
        _write_private(directory / _SERVER_KEY, leaf.private_key_pem.bytes())

        key_id, team_id = _apple_id(), _apple_id()
        apns_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        apns_key_name = f"AuthKey_{key_id}.p8"
        _write_private(directory / apns_key_name, apns_key)

        token_uri = UNBOUND_TOKEN_URI if base_url is None else f"{base_url}/token"
        account = _service_account(fcm_project, token_uri)
        _write_private(directory / _SERVICE_ACCOUNT, json.dumps(account, indent=2).encode())

        manifest = {
            "apns_key_file": apns_key_name,
            "apns_key_id": key_id,
            "apns_team_id": team_id,
            "apns_topic": apns_topic,
            "fcm_project": fcm_project,
        }
        _write_private(directory / _MANIFEST, json.dumps(manifest, indent=2).encode())
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> StandInCredentials:
        """The credentials `create` made in `directory`.

        Raises FileNotFoundError if some are missing, ValueError if the manifest is damaged.
        """
        try:
            manifest = json.loads((directory / _MANIFEST).read_text())
            credentials = cls(
                directory=directory,
                ca_file=directory / _CA,
                server_cert_file=directory / _SERVER_CERT,
                server_key_file=directory / _SERVER_KEY,
                apns_key_file=directory / manifest["apns_key_file"],
                apns_key_id=manifest["apns_key_id"],
                apns_team_id=manifest["apns_team_id"],
                apns_topic=manifest["apns_topic"],
                fcm_service_account_file=directory / _SERVICE_ACCOUNT,
                fcm_project=manifest["fcm_project"],
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{directory / _MANIFEST} is not a stand-in manifest") from exc
        for path in credentials.files():
            if not path.is_file():
                raise FileNotFoundError(f"stand-in credentials incomplete: {path} is missing")
        return credentials

    @classmethod
    def load_or_create(cls, directory: Path, *, base_url: str | None = None) -> StandInCredentials:
        """Reuse the credentials in `directory` if it holds a complete set, else create them.

        With `base_url`, the token_uri on disk is pointed at it either way.
        """
        if (directory / _MANIFEST).is_file():
            credentials = cls.load(directory)
            if base_url is not None:
                credentials.point_token_uri_at(base_url)
            return credentials
        return cls.create(directory, base_url=base_url)

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_file,
            self.server_cert_file,
            self.server_key_file,
            self.apns_key_file,
            self.fcm_service_account_file,
        )

    def point_token_uri_at(self, base_url: str) -> None:
        """Rewrite the service account's token_uri to `<base_url>/token` (atomically, 0600)."""
        account = self.service_account()
        account["token_uri"] = f"{base_url}/token"
        _write_private(self.fcm_service_account_file, json.dumps(account, indent=2).encode())

    def service_account(self) -> dict[str, Any]:
        """The service-account JSON as a dict (it holds the private key: never log it)."""
        return cast(dict[str, Any], json.loads(self.fcm_service_account_file.read_text()))

    def apns_key_pem(self) -> str:
        """The .p8 file's text, as aioapns' `key=` takes it."""
        return self.apns_key_file.read_text()

    def apns_public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_private_key(self.apns_key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.apns_key_file} is not an EC key")
        return key.public_key()

    def fcm_public_key(self) -> rsa.RSAPublicKey:
        pem = self.service_account()["private_key"].encode()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{self.fcm_service_account_file} does not hold an RSA key")
        return key.public_key()

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2+ server context offering ALPN "h2" (a client offering none is served too)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert_file, self.server_key_file)
        context.set_alpn_protocols(["h2"])
        return context

    def client_ssl_context(self, *, alpn: bool = True) -> ssl.SSLContext:
        """A client context trusting only the stand-in's CA (ALPN "h2" unless `alpn=False`)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            context.set_alpn_protocols(["h2"])
        return context

    def describe(self) -> dict[str, str]:
        """Paths and ids as JSON-ready strings (no key material)."""
        return {
            "directory": str(self.directory),
            "ca_file": str(self.ca_file),
            "server_cert_file": str(self.server_cert_file),
            "server_key_file": str(self.server_key_file),
            "apns_key_file": str(self.apns_key_file),
            "apns_key_id": self.apns_key_id,
            "apns_team_id": self.apns_team_id,
            "apns_topic": self.apns_topic,
            "fcm_service_account_file": str(self.fcm_service_account_file),
            "fcm_project": self.fcm_project,
        }
