"""A command run as a real child process, its output collected as it comes."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Process:
    """A started command whose output (stdout and stderr) is collected as it comes."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        *,
        new_session: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: the whole environment (default: ours without OBROL_* settings)."""
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OBROL_")}
        env = env | {
            "PYTHONPATH": str(ROOT),
            "OBROL_POSTGRES_SHARED_DIR": os.path.realpath(cwd / ".shared") + "/clusters",
        }
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,  # its own process group, as a terminal gives it
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.output}")

    def finish(self, timeout_s: float = 60) -> int:
        code = self.popen.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
