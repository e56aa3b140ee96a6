"""The stand-in's credentials look like Apple's and Google's, are private, and are reused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push.standin import StandInCredentials

GOOGLE_FIELDS = {
    "type",
    "project_id",
    "private_key_id",
    "private_key",
    "client_email",
    "client_id",
    "auth_uri",
    "token_uri",
    "auth_provider_x509_cert_url",
    "client_x509_cert_url",
    "universe_domain",
}


def test_files_are_private_and_shaped_like_the_real_ones(tmp_path: Path) -> None:
    folder = tmp_path / "creds"
    credentials = StandInCredentials.create(folder, base_url="https://127.0.0.1:9")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    assert len(credentials.apns_key_id) == 10 and credentials.apns_key_id.isalnum()
    assert len(credentials.apns_team_id) == 10 and credentials.apns_team_id.isalnum()
    assert credentials.apns_key_file.name == f"AuthKey_{credentials.apns_key_id}.p8"
    pem = credentials.apns_key_file.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Apple's .p8
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    account = json.loads(credentials.fcm_service_account_file.read_text())
    assert set(account) == GOOGLE_FIELDS
    assert account["type"] == "service_account"
    assert account["project_id"] == credentials.fcm_project
    assert account["token_uri"] == "https://127.0.0.1:9/token"
    assert account["client_email"].endswith(f"@{credentials.fcm_project}.iam.gserviceaccount.com")
    assert len(account["private_key_id"]) == 40 and len(account["client_id"]) == 21
    rsa_key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert account["private_key"].startswith("-----BEGIN PRIVATE KEY-----")

    cert = x509.load_pem_x509_certificate(credentials.server_cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def test_reloading_keeps_the_ids_and_repoints_the_token_uri(tmp_path: Path) -> None:
    first = StandInCredentials.create(tmp_path / "c")
    again = StandInCredentials.load_or_create(tmp_path / "c", base_url="https://127.0.0.1:4443")
    assert again == first
    assert again.service_account()["token_uri"] == "https://127.0.0.1:4443/token"
    assert stat.S_IMODE(again.fcm_service_account_file.stat().st_mode) == 0o600


def test_an_incomplete_folder_is_an_error(tmp_path: Path) -> None:
    credentials = StandInCredentials.create(tmp_path / "c")
    credentials.apns_key_file.unlink()
    with pytest.raises(FileNotFoundError):
        StandInCredentials.load(tmp_path / "c")
