"""The provisioning cache: what a run made on a server, so the next run can reuse it.

One JSON file holds an entry per server identity key: the load-test organization, its
owner, the users with their devices' secret keys, the conversation layouts made, and the
stream position reached (so a later run does not catch up on old traffic). It holds
credentials of throwaway load-test accounts; it is written with mode 0600. `path=None`
keeps the cache in memory only (a run on a fresh server of its own).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from protocol.errors import ObrolError

FORMAT = 1


class CacheError(ObrolError):
    """The cache file cannot be read or written."""


class ServerEntry:
    """What was provisioned on one server (by its identity key)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._fill_defaults()

    def _fill_defaults(self) -> None:
        data = self.data
        data.setdefault("tag", "")
        data.setdefault("org_id", None)
        data.setdefault("owner", {})
        data.setdefault("users", [])
        data.setdefault("layouts", {})
        data.setdefault("cursor", 0)

    def reset(self) -> None:
        """Forget everything (the server no longer knows this organization)."""
        self.data.clear()
        self._fill_defaults()

    @property
    def tag(self) -> str:
        return str(self.data["tag"])

    @tag.setter
    def tag(self, value: str) -> None:
        self.data["tag"] = value

    @property
    def org_id(self) -> str | None:
        value = self.data["org_id"]
        return None if value is None else str(value)

    @org_id.setter
    def org_id(self, value: str) -> None:
        self.data["org_id"] = value

    @property
    def owner(self) -> dict[str, Any]:
        owner: dict[str, Any] = self.data["owner"]
        return owner

    @owner.setter
    def owner(self, value: dict[str, Any]) -> None:
        self.data["owner"] = value

    @property
    def users(self) -> list[Any]:
        """Per user index: {id, email, password, refresh, devices: [{id, key}]} or None."""
        users: list[Any] = self.data["users"]
        return users

    @property
    def layouts(self) -> dict[str, Any]:
        """Per layout signature: {conversations: [{id, file_id} or None]}."""
        layouts: dict[str, Any] = self.data["layouts"]
        return layouts

    @property
    def cursor(self) -> int:
        return int(self.data["cursor"])

    @cursor.setter
    def cursor(self, value: int) -> None:
        self.data["cursor"] = max(self.cursor, value)


class ProvisionCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] = {"format": FORMAT, "servers": {}}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CacheError(
                    f"cannot read the provisioning cache {path}: {exc} (delete it or pass --fresh)"
                ) from None
            if isinstance(data, dict) and data.get("format") == FORMAT:
                self._data = data

    def entry(self, server_key: str, *, fresh: bool = False) -> ServerEntry:
        """The entry of the server with this identity key (new or emptied if `fresh`)."""
        servers: dict[str, Any] = self._data.setdefault("servers", {})
        if fresh or server_key not in servers:
            servers[server_key] = {}
        return ServerEntry(servers[server_key])

    def save(self) -> None:
        """Write the file atomically, readable only by its owner."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f)
            temporary.replace(self.path)
        except OSError as exc:
            raise CacheError(f"cannot write the provisioning cache {self.path}: {exc}") from None


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/obrol-loadtest/provisioning.json` (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "obrol-loadtest" / "provisioning.json"
