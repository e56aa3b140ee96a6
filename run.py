#!/usr/bin/env python3
"""One-command entry points for a fresh machine: `python3 run.py serve` and `python3 run.py test`.

Creates `.venv/` beside this file on first use, installs obrol (with the test tools for
`test`) into it, re-installs only when pyproject.toml changed, then runs the command.
Needs nothing but Python 3.11+.

`serve` and `loadtest` replace this process with `.venv/bin/obrol` (exec), so signals, the
exit status and the terminal go to obrol itself: SIGTERM or Ctrl-C stops the server and its
embedded database exactly as `obrol serve` run directly does. Where there is no exec (Windows)
the command runs as a child that gets the interrupt too; run.py waits for it to finish.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

USAGE = """usage: python3 run.py serve [obrol serve options]   install and start the server
       python3 run.py test  [pytest options]         install and run lint, types and tests
       python3 run.py loadtest [options]             install and run the load tester"""


def ensure_installed(extras: str) -> None:
    """Create the virtualenv and install the project once per pyproject.toml version.

    Any install of this pyproject.toml version serves a plain (no extras) request: `.[dev]`
    holds everything `.` does.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py may be started by an old python3
        sys.exit("obrol needs Python 3.11 or newer; this is " + sys.version.split()[0])
    if not PYTHON.exists():
        print(f"run.py: creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extras or 'base'}-{digest}"
    if stamp.exists() or (not extras and any(VENV.glob(f".installed-*-{digest}"))):
        return
    print("run.py: installing obrol and its dependencies into .venv", flush=True)
    target = f".[{extras}]" if extras else "."
    code = run_child(
        [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", target],
        ROOT,
    )
    if code != 0:
        sys.exit(f"run.py: installing obrol failed (pip exit status {code})")
    for old in VENV.glob(f".installed-{extras or 'base'}-*"):
        old.unlink()
    stamp.touch()


def run_tests(args: list[str]) -> int:
    """Lint, type-check, then run pytest; any failure, or zero tests, fails the run."""
    steps = [
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "mypy")],
    ]
    for step in steps:
        print(
            "run.py: " + " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)),
            flush=True,
        )
        if run_child(step, ROOT) != 0:
            return 1
    code = run_child([str(PYTHON), "-m", "pytest", *args], ROOT)
    if code == 5:  # pytest's "no tests were collected": never a green run
        print("run.py: pytest ran no tests", file=sys.stderr)
        return 1
    return code


def run_child(argv: list[str], cwd: Path) -> int:
    """Run `argv` to its end and return its exit status.

    A terminal's Ctrl-C reaches the child too (same process group): wait while it stops and
    cleans up (pytest stops its throwaway PostgreSQL), then raise KeyboardInterrupt. Killing
    it, as `subprocess.run` does, would leave its children running. A SIGTERM sent to run.py
    is passed on to the child, and run.py waits for it likewise.
    """
    child = subprocess.Popen(argv, cwd=cwd)
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
    interrupted = False
    try:
        while True:
            try:
                code = child.wait()
            except KeyboardInterrupt:
                interrupted = True
                continue
            if interrupted:
                raise KeyboardInterrupt
            return code
    finally:
        signal.signal(signal.SIGTERM, previous)


def hand_over(argv: list[str]) -> int:
    """Become `argv` (exec) where possible; elsewhere run it as a child and wait for it."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(argv[0], argv)  # noqa: S606 - no shell, our own program; does not return
    try:
        return run_child(argv, Path.cwd())
    except KeyboardInterrupt:
        return 130


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test", "loadtest"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    try:
        if command == "test":
            ensure_installed("dev")
            return run_tests(rest)
        ensure_installed("")
    except KeyboardInterrupt:  # Ctrl-C while installing or testing: no traceback
        print("run.py: interrupted", file=sys.stderr)
        return 130
    return hand_over([str(BIN / "obrol"), command, *rest])


if __name__ == "__main__":
    sys.exit(main())
