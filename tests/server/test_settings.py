"""Settings: defaults < TOML file < environment < flags, validated with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "obrol.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nlog_format = "json"\n')
    monkeypatch.setenv("OBROL_PORT", "9100")
    settings = load_settings(config)
    assert (settings.host, settings.port, settings.log_format) == ("0.0.0.0", 9100, "json")
    assert load_settings(config, port=9200).port == 9200
    assert load_settings(None).port == 9100


def test_invalid_settings_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "obrol.toml"
    config.write_text("port = 70000\ncolour = 'blue'\n")
    with pytest.raises(SettingsError, match="port") as info:
        load_settings(config)
    assert "colour" in str(info.value)
    config.write_text("port = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_tls_files_come_in_pairs_and_proxies_are_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError, match="tls_cert_file and tls_key_file go together"):
        load_settings(None, tls_cert_file=tmp_path / "cert.pem")
    with pytest.raises(SettingsError, match="tls_cert_file and tls_key_file go together"):
        load_settings(None, tls_key_file=tmp_path / "key.pem")
    both = load_settings(None, tls_cert_file=Path("c.pem"), tls_key_file=Path("k.pem"))
    assert both.tls_enabled and not load_settings(None).tls_enabled
    assert load_settings(None).trusted_proxies == []
    with pytest.raises(SettingsError, match=r"trusted_proxies.*'proxy\.lan' is not an IP"):
        load_settings(None, trusted_proxies=["10.0.0.1", "proxy.lan"])
    config = tmp_path / "obrol.toml"
    config.write_text('trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]\n')
    assert load_settings(config).trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"]
    monkeypatch.setenv("OBROL_TRUSTED_PROXIES", '["192.0.2.1"]')
    assert load_settings(None).trusted_proxies == ["192.0.2.1"]


def test_asyncpg_pool_tracebacks_become_one_line() -> None:
    # During a database outage asyncpg's pool logs each failed reconnect with a traceback.
    import logging
    import sys

    from server.logs import _OneLine

    try:
        raise ConnectionRefusedError("connection refused\nsecond line")
    except ConnectionRefusedError:
        record = logging.LogRecord(
            "asyncpg.pool",
            logging.WARNING,
            "x",
            1,
            "Failed to restore %s",
            ("floor",),
            sys.exc_info(),
        )
    assert _OneLine().filter(record)
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore floor (ConnectionRefusedError: connection refused)"
    )


def test_trusted_proxies_refuse_typos_and_everyone(tmp_path: Path) -> None:
    for bad in ("10.0.0.5/8", "0.0.0.0/0", "::/0", "proxy.example"):
        with pytest.raises(SettingsError, match="trusted_proxies"):
            load_settings(None, data_dir=tmp_path, trusted_proxies=[bad])
    assert load_settings(None, data_dir=tmp_path, trusted_proxies=["10.0.0.0/8"]).trusted_proxies
