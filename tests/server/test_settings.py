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
