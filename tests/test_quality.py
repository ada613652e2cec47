"""The tooling gates run as tests, so the README's one test command also enforces them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_imports_no_io_or_clock() -> None:
    """The engine is pure: no database, cache, HTTP, or wall clock."""
    forbidden = ("psycopg", "redis", "litestar", "httpx", "socket", "time", "service", "simulation")
    for path in (ROOT / "engine").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                module = words[1].split(".")[0]
                assert module not in forbidden, f"{path.name}: {line.strip()}"
            assert ".now(" not in line and "utcnow" not in line, f"{path.name}: {line.strip()}"
