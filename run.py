#!/usr/bin/env python3
"""One-command entry points for a fresh machine: `python3 run.py serve` and `python3 run.py test`.

Creates `.venv/` beside this file on first use, installs obrol (with the test tools for
`test`) into it, re-installs only when pyproject.toml changed, then runs the command.
Needs nothing but Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
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
    """Create the virtualenv and install the project once per pyproject.toml version."""
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py may be started by an old python3
        sys.exit("obrol needs Python 3.11 or newer; this is " + sys.version.split()[0])
    if not PYTHON.exists():
        print(f"run.py: creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extras or 'base'}-{digest}"
    if stamp.exists():
        return
    print("run.py: installing obrol and its dependencies into .venv", flush=True)
    target = f".[{extras}]" if extras else "."
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", target],
        cwd=ROOT,
        check=True,
    )
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
        if subprocess.run(step, cwd=ROOT, check=False).returncode != 0:
            return 1
    code = subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT, check=False).returncode
    if code == 5:  # pytest's "no tests were collected": never a green run
        print("run.py: pytest ran no tests", file=sys.stderr)
        return 1
    return code


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test", "loadtest"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "test":
        ensure_installed("dev")
        return run_tests(rest)
    ensure_installed("")
    obrol = BIN / "obrol"
    return subprocess.run([str(obrol), command, *rest], cwd=Path.cwd(), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
